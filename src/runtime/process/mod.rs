//! Agent processes: the seam the supervisor sees them through
//! ([`handle`]), the real child ([`child`]), its io thread ([`io`]), and
//! the spawner that starts them ([`spawner`]). The system calls underneath
//! are in `crate::sys`.

pub(crate) mod child;
pub(crate) mod handle;
mod io;
pub(crate) mod spawner;

pub(crate) use handle::{
    describe_exit, signal_name, ChildHandle, ChildMsg, ChildSink, SpawnRequest, Spawner,
};
pub(crate) use spawner::OsSpawner;
