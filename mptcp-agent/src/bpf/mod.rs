//! The kernel side as user space sees it: the embedded objects, loading, links, pins and the
//! privileges they need.

pub mod loader;
pub mod maps;
