//! The deterministic network plan of an exit node (seed 001, "Routing in ExitNodes").
//!
//! From the allocation /48, the exit node number, the allocation number and the tenant
//! networks (each a list of node + /64, one marked as the ExitPoint), [`derive`] computes
//! every link, address, route, WireGuard peer, NAT rule and data-plane entry; nothing else
//! is consulted. The reconciler (`crate::netlink`) makes a machine match a plan.

pub mod cli;
mod derive;
pub mod input;
pub mod model;
pub mod naming;
pub mod render;
pub mod settings;
pub mod validate;

pub use derive::derive;
pub use input::NetworkConfig;
pub use model::*;
pub use validate::PlanError;

#[cfg(test)]
mod tests;
