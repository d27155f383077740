//! The `notify` Lambda function. Its wiring to the shared crate (DynamoDB, SQS, Secrets Manager)
//! is the next piece of work; until then it refuses to start rather than pretend.

fn main() -> std::process::ExitCode {
    eprintln!(
        "spkeeper: the notify Lambda function is not built yet; run `spkeeper serve` instead"
    );
    std::process::ExitCode::from(1)
}
