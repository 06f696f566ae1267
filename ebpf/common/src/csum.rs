//! Internet checksum (RFC 1071) arithmetic, usable from eBPF (no allocation, bounded loops).

/// Adds `bytes` to a running one's-complement sum, as big-endian 16-bit words (an odd trailing
/// byte is padded with zero, as RFC 1071 says).
#[inline(always)]
pub fn add_bytes(mut sum: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u64;
        i += 2;
    }
    if i < bytes.len() {
        sum += (bytes[i] as u64) << 8;
    }
    sum
}

/// Folds a running sum to 16 bits and complements it: the value to store in a checksum field
/// (big-endian).
#[inline(always)]
pub fn finish(mut sum: u64) -> u16 {
    // Four folds bring any u64 down to 16 bits; written out so the verifier sees no loop.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// RFC 1624 incremental update: the checksum after a 16-bit word of the covered data changed
/// from `old` to `new` (all values as big-endian numbers).
#[inline(always)]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    let sum = (!csum) as u64 + (!old) as u64 + new as u64;
    finish(sum)
}

/// RFC 1624 incremental update for a 32-bit field (an IPv4 address), given as big-endian number.
#[inline(always)]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let sum = (!csum) as u64
        + (!(old >> 16) & 0xffff) as u64
        + (!old & 0xffff) as u64
        + (new >> 16) as u64
        + (new & 0xffff) as u64;
    finish(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    // An IPv4 header whose checksum (0xb861) is given in RFC 1071 style examples.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn full_checksum_of_a_known_ipv4_header() {
        assert_eq!(finish(add_bytes(0, &HDR)), 0xb861);
    }

    #[test]
    fn a_header_with_its_checksum_in_place_sums_to_zero() {
        let mut h = HDR;
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(finish(add_bytes(0, &h)), 0);
    }

    #[test]
    fn odd_length_pads_the_last_byte() {
        assert_eq!(add_bytes(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn incremental_address_update_matches_recomputation() {
        let mut h = HDR;
        let before = finish(add_bytes(0, &h));
        let old = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
        let new = u32::from_be_bytes([10, 244, 3, 17]);
        h[16..20].copy_from_slice(&new.to_be_bytes());
        assert_eq!(update32(before, old, new), finish(add_bytes(0, &h)));
    }

    #[test]
    fn incremental_port_update_matches_recomputation() {
        let mut data = [0x1fu8, 0x90, 0xab, 0xcd, 0x00, 0x50, 0xff, 0xee];
        let before = finish(add_bytes(0, &data));
        let old = u16::from_be_bytes([data[4], data[5]]);
        data[4..6].copy_from_slice(&8080u16.to_be_bytes());
        assert_eq!(update16(before, old, 8080), finish(add_bytes(0, &data)));
    }
}
