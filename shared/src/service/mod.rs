//! Services: the use cases, composed from the core and the ports.

pub mod deliver;
pub mod exchange;
pub mod grants;
pub mod launch;
pub mod sweep;
