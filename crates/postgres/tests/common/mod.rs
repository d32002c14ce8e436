//! The team-store test harness of vmdesk_postgres::testing, for this
//! crate's tests and benches.
#![allow(unused_imports)]

pub use vmdesk_postgres::testing::*;
