//! How ranks find each other: the [`UniqueId`](unique_id::UniqueId), the stores
//! ([`TcpStore`](tcp_store::TcpStore), [`FileStore`](file_store::FileStore)), the launcher
//! environment ([`env`](mod@env)) and the choice of network interface ([`net`]).

pub mod env;
pub mod file_store;
pub mod net;
pub mod tcp_store;
pub mod unique_id;
