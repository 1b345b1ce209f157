//! Default memory limits from the machine's RAM tier (the seed's 16 / 32 / 64+ GB tiers):
//! small machines keep more back for the desktop and load fewer models at once.

const GIB: u64 = 1 << 30;

/// Total RAM, from /proc/meminfo.
pub fn total_ram_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// (memory budget in bytes, most models loaded at once) for a machine with `total` RAM.
pub fn tier_defaults(total: u64) -> (u64, usize) {
    match total {
        // Up to the 16 GB tier: half the RAM, one model at a time.
        t if t <= 20 * GIB => (t / 2, 1),
        // The 32 GB tier: 60%, two models.
        t if t <= 40 * GIB => (t * 6 / 10, 2),
        // 64 GB and up: 70%, four models.
        t => (t * 7 / 10, 4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers() {
        assert_eq!(tier_defaults(16 * GIB), (8 * GIB, 1));
        assert_eq!(tier_defaults(32 * GIB).1, 2);
        assert_eq!(tier_defaults(128 * GIB), (128 * GIB * 7 / 10, 4));
        assert!(total_ram_bytes().unwrap() > GIB);
    }
}
