//! Prices: what a VM costs to create (from its size) and to run (a share of
//! that price per hour). The ledger itself is each store's: the embedded
//! store's `ledger` rows (crate::embedded), the team store's `vmdesk.ledger`.

use crate::error::Result;
use crate::model::Quote;
use crate::validate;

/// Price floor of any VM.
pub const MIN_COST: i64 = 10;

/// The price of a VM: RAM/512*5 + disk/10*2 + CPUs*10 credits, rounded up to a
/// whole credit, at least 10 (1024 MB, 20 GB and 2 CPUs cost 34).
pub fn quote(ram_mb: i64, disk_gb: i64, cpus: i64) -> Result<Quote> {
    validate::size(ram_mb, disk_gb, cpus)?;
    // Exact arithmetic over the common denominator 5120 (= 512 * 10).
    let numerator = ram_mb * 5 * 10 + disk_gb * 2 * 512 + cpus * 10 * 5120;
    let cost = (numerator + 5119) / 5120;
    Ok(Quote {
        cost: cost.max(MIN_COST),
    })
}

/// Thousandths of a credit per hour of running a VM whose price is `cost`,
/// at `hourly_percent` percent of the price per hour (billing's one formula).
pub fn hourly_milli(cost: i64, hourly_percent: i64) -> i64 {
    cost.saturating_mul(hourly_percent).saturating_mul(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_of_the_seed_example_is_34() {
        assert_eq!(quote(1024, 20, 2).map(|q| q.cost).ok(), Some(34));
    }

    #[test]
    fn quote_of_the_smallest_vm_is_11() {
        // 64/512*5 = 0.625, 1/10*2 = 0.2, 1*10 = 10 -> 10.825 -> 11
        assert_eq!(quote(64, 1, 1).map(|q| q.cost).ok(), Some(11));
    }

    #[test]
    fn quote_rounds_a_fraction_up() {
        // 1000/512*5 = 9.77, 1/10*2 = 0.2, 1*10 = 10 -> 19.97 -> 20
        assert_eq!(quote(1000, 1, 1).map(|q| q.cost).ok(), Some(20));
    }

    #[test]
    fn quote_rejects_a_bad_size() {
        assert!(quote(0, 20, 2).is_err());
    }

    #[test]
    fn quote_of_the_largest_size_does_not_overflow() {
        assert!(quote(1_048_576, 65_536, 256).is_ok());
    }
}
