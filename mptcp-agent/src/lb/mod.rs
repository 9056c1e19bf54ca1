//! The token-steering load balancer: configuration, Maglev placement, its maps and links.

pub mod maglev;
pub mod steering;
