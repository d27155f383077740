//! Replays every committed fuzz input on stable, through the very functions the fuzz targets
//! call (`spkeeper::fuzzing`), so CI checks each invariant on every input the fuzzer kept.
//!
//! `fuzz/corpus/<target>/` must exist and hold at least one file for every target (a missing
//! or empty directory fails, so the replay cannot pass by finding nothing);
//! `fuzz/regressions/<target>/`, when present, holds minimized inputs that once failed.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use spkeeper::fuzzing::{self, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The regular files of `dir`, sorted; empty when it does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on each input; fails naming every input whose invariant broke.
fn run_all(target: &str, inputs: Vec<(String, Vec<u8>)>) {
    let mut failed = Vec::new();
    for (name, data) in &inputs {
        if catch_unwind(AssertUnwindSafe(|| fuzzing::run(target, data))).is_err() {
            failed.push(name.clone());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of {target} broke an invariant (messages above): {failed:#?}",
        failed.len(),
        inputs.len()
    );
}

fn replay(target: &str) {
    let corpus = fuzz_dir().join("corpus").join(target);
    let files = files_in(&corpus);
    assert!(
        !files.is_empty(),
        "{} is missing or empty: every target keeps a corpus",
        corpus.display()
    );
    let regressions = files_in(&fuzz_dir().join("regressions").join(target));
    let inputs = files
        .into_iter()
        .chain(regressions)
        .map(|p| {
            let data = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), data)
        })
        .collect();
    run_all(target, inputs);
}

#[test]
fn context_token_corpus_keeps_its_invariants() {
    replay("context_token");
}

#[test]
fn context_token_signed_corpus_keeps_its_invariants() {
    replay("context_token_signed");
}

#[test]
fn hosts_corpus_keeps_its_invariants() {
    replay("hosts");
}

#[test]
fn renew_link_corpus_keeps_its_invariants() {
    replay("renew_link");
}

#[test]
fn acs_response_corpus_keeps_its_invariants() {
    replay("acs_response");
}

#[test]
fn launch_form_corpus_keeps_its_invariants() {
    replay("launch_form");
}

#[test]
fn seeds_keep_their_invariants() {
    for target in TARGETS {
        let seeds = fuzzing::seeds(target);
        assert!(!seeds.is_empty(), "{target} has seeds");
        run_all(
            target,
            seeds
                .into_iter()
                .enumerate()
                .map(|(i, s)| (format!("seed {i}"), s))
                .collect(),
        );
    }
}

/// Every corpus directory is a target, and every target is a cargo-fuzz binary that calls the
/// function of the same name: what is fuzzed is what is replayed.
#[test]
fn fuzz_targets_and_corpora_match() {
    let mut dirs: Vec<String> = fs::read_dir(fuzz_dir().join("corpus"))
        .expect("fuzz/corpus exists")
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = TARGETS.iter().map(|t| t.to_string()).collect();
    targets.sort();
    assert_eq!(dirs, targets, "one corpus directory per target");

    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for target in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml declares {target}"
        );
        let source = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let code = fs::read_to_string(&source).unwrap_or_else(|e| panic!("{target}: {e}"));
        assert!(
            code.contains(&format!("spkeeper::fuzzing::{target}(data)")),
            "{} calls spkeeper::fuzzing::{target}",
            source.display()
        );
    }
}

/// Writes each target's seeds into `fuzz/corpus/<target>/` (names from their content). Run
/// once before fuzzing a new target: `cargo test -p spkeeper --test fuzz_replay --
/// --ignored write_seed_corpora`.
#[test]
#[ignore = "writes files: run by hand to seed the corpora"]
fn write_seed_corpora() {
    use sha2::{Digest, Sha256};
    for target in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).expect("create the corpus directory");
        for seed in fuzzing::seeds(target) {
            let name = format!("seed-{}", hex::encode(&Sha256::digest(&seed)[..10]));
            fs::write(dir.join(name), seed).expect("write a seed");
        }
    }
}
