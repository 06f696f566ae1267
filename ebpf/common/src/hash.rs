//! The flow hash that picks a backend slot for a new flow. Shared so the agent and tests can
//! reason about the datapath's choices with the same function.

/// splitmix64's finaliser: every input bit affects every output bit.
#[inline(always)]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hash of a flow's 5-tuple (fields as they sit in the packet), salted with a per-datapath seed
/// so that flows cannot be steered to one backend by choosing ports against a known function.
#[inline(always)]
pub fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8, seed: u32) -> u32 {
    let a = ((saddr as u64) << 32) | daddr as u64;
    let b = ((proto as u64) << 32) | ((sport as u64) << 16) | dport as u64;
    let h = mix(mix((seed as u64) ^ 0x9e37_79b9_7f4a_7c15 ^ a) ^ b);
    (h ^ (h >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ports_spread_evenly_over_three_slots() {
        let mut counts = [0u32; 3];
        let n = 30_000u32;
        for i in 0..n {
            let sport = (32768 + i) as u16;
            counts[(flow_hash(0x0a00_0001, 0x0a60_000a, sport.to_be(), 80u16.to_be(), 6, 7) % 3)
                as usize] += 1;
        }
        for c in counts {
            // 10,000 expected per slot; a fair hash stays well within 3%.
            assert!((9_700..=10_300).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn the_seed_changes_the_choice() {
        let differing = (0..1000u16)
            .filter(|p| flow_hash(1, 2, *p, 80, 6, 1) % 5 != flow_hash(1, 2, *p, 80, 6, 2) % 5)
            .count();
        assert!(differing > 600, "{differing}");
    }
}
