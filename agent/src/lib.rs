//! exitd: turns a Linux box with a routed IPv6 /48 into an exit node.
//!
//! The binary (`src/main.rs`) is a thin command-line front end over these modules.

pub mod api;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod iface;
pub mod logging;
pub mod netlink;
pub mod notify;
pub mod parker;
pub mod plan;
pub mod registry;
pub mod wireguard;
