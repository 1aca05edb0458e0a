//! Agent processes: the seam the supervisor sees them through
//! ([`handle`]), the real child ([`child`]), its io thread ([`io`]), and
//! the spawner that starts them ([`spawner`]). The system calls underneath
//! are in `crate::sys`.

pub mod child;
pub mod handle;
mod io;
pub mod spawner;

pub use handle::{
    describe_exit, signal_name, ChildHandle, ChildMsg, ChildSink, SpawnDone, SpawnRequest, Spawner,
};
pub use spawner::OsSpawner;
