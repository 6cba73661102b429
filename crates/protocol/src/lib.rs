//! The Flomation runner protocol (PROTOCOL.md), shared by `flo-runner` and
//! `flo-devserver`: the wire types ([`protocol`]), the validated ids that
//! come off the network ([`ids`]) and request signing ([`signing`]).

pub mod ids;
pub mod protocol;
pub mod signing;
