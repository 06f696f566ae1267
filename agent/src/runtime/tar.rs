//! A minimal tar reader for OCI image layout archives: finds where each regular file's data
//! lies in the archive, so that blobs can be streamed from it without unpacking. Understands
//! ustar (with its name prefix), GNU long names (`L`), pax `path` records (`x`) and hard links
//! to earlier entries; every other entry type (directories, symlinks, devices) is skipped.

use std::{
    collections::HashMap,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    path::Path,
};

use super::error::ImageError;

type Result<T, E = ImageError> = std::result::Result<T, E>;

/// The archive is not one this reader understands.
fn bad(what: String) -> ImageError {
    ImageError::Tar { what }
}

/// Where one regular file's data is in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Byte offset of the data in the archive file.
    pub(crate) offset: u64,
    /// Length of the data.
    pub(crate) size: u64,
}

const BLOCK: u64 = 512;
/// Upper bound for GNU long-name and pax header data we read into memory.
const MAX_META: u64 = 1 << 20;

/// Lists the regular files of the tar archive at `path` by their normalized names (no leading
/// `./` or `/`).
pub(crate) fn scan(path: &Path) -> Result<HashMap<String, Entry>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    scan_reader(&mut file, len)
}

fn scan_reader(file: &mut File, len: u64) -> Result<HashMap<String, Entry>> {
    let mut entries = HashMap::new();
    let mut pos = 0u64;
    let mut long_name: Option<String> = None;
    let mut header = [0u8; BLOCK as usize];
    while pos + BLOCK <= len {
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut header)?;
        if header.iter().all(|&b| b == 0) {
            break;
        }
        verify_checksum(&header).map_err(|e| bad(format!("header at offset {pos}: {e}")))?;
        let size = parse_size(&header[124..136]).map_err(|e| bad(format!("size at {pos}: {e}")))?;
        let data = pos + BLOCK;
        if data + size > len {
            return Err(bad(format!(
                "entry at offset {pos} runs past the end of the archive"
            )));
        }
        let typeflag = header[156];
        let name = match long_name.take() {
            Some(n) => n,
            None => header_name(&header),
        };
        match typeflag {
            b'0' | b'\0' | b'7' => {
                entries.insert(normalize(&name), Entry { offset: data, size });
            }
            b'1' => {
                let target = normalize(&cstr(&header[157..257]));
                if let Some(e) = entries.get(&target).copied() {
                    entries.insert(normalize(&name), e);
                }
            }
            b'L' => long_name = Some(cstr(&read_meta(file, data, size)?)),
            b'x' => long_name = pax_path(&read_meta(file, data, size)?),
            _ => {}
        }
        pos = data + size.div_ceil(BLOCK) * BLOCK;
    }
    Ok(entries)
}

fn read_meta(file: &mut File, offset: u64, size: u64) -> Result<Vec<u8>> {
    if size > MAX_META {
        return Err(bad(format!(
            "a tar metadata entry of {size} bytes is too large"
        )));
    }
    let mut buf = vec![0u8; usize::try_from(size)?];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

fn verify_checksum(header: &[u8; BLOCK as usize]) -> Result<()> {
    let stored = parse_octal(&header[148..156]).map_err(|e| bad(format!("checksum field: {e}")))?;
    let sum: u64 = header
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    if sum != stored {
        return Err(bad(
            "bad tar header checksum (not a tar archive?)".to_owned()
        ));
    }
    Ok(())
}

fn header_name(header: &[u8; BLOCK as usize]) -> String {
    let name = cstr(&header[0..100]);
    // POSIX ustar ("ustar\0") keeps a name prefix; GNU's "ustar  " uses that space otherwise.
    if &header[257..263] == b"ustar\0" {
        let prefix = cstr(&header[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn normalize(name: &str) -> String {
    let mut n = name;
    loop {
        if let Some(rest) = n.strip_prefix("./") {
            n = rest;
        } else if let Some(rest) = n.strip_prefix('/') {
            n = rest;
        } else {
            break;
        }
    }
    n.to_owned()
}

fn parse_octal(field: &[u8]) -> Result<u64> {
    let text = String::from_utf8_lossy(field);
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(digits, 8).map_err(|_| bad(format!("bad octal number {digits:?}")))
}

fn parse_size(field: &[u8]) -> Result<u64> {
    // GNU base-256 for sizes of 8 GiB and more: high bit set, big-endian binary.
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| bad("tar size overflows".to_owned()))?;
        }
        return Ok(v);
    }
    parse_octal(field)
}

/// The `path` record of a pax extended header ("<len> path=<value>\n" records).
fn pax_path(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return None;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record.strip_prefix(b"path=") {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = &rest[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, process::Command};

    use super::*;

    #[test]
    fn reads_what_gnu_tar_writes() {
        let dir = std::env::temp_dir().join(format!("skiff-tar-test-{}", std::process::id()));
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("blobs/sha256")).unwrap();
        std::fs::write(src.join("index.json"), b"{}").unwrap();
        let long = "x".repeat(150);
        std::fs::write(src.join("blobs/sha256").join(&long), b"long name").unwrap();
        let mut f = std::fs::File::create(src.join("blobs/big")).unwrap();
        f.write_all(&vec![7u8; 5000]).unwrap();
        drop(f);
        for format in ["gnu", "posix", "ustar"] {
            let archive = dir.join(format!("{format}.tar"));
            let ok = Command::new("tar")
                .arg(format!("--format={format}"))
                .arg("-C")
                .arg(&src)
                .arg("-cf")
                .arg(&archive)
                .arg(".")
                .status()
                .unwrap()
                .success();
            if !ok {
                // ustar cannot hold the 150-character name; the other two must.
                assert_eq!(format, "ustar");
                continue;
            }
            let entries = scan(&archive).unwrap();
            let read = |name: &str| {
                let e = entries[name];
                let all = std::fs::read(&archive).unwrap();
                all[e.offset as usize..(e.offset + e.size) as usize].to_vec()
            };
            assert_eq!(read("index.json"), b"{}", "{format}");
            assert_eq!(read("blobs/big"), vec![7u8; 5000], "{format}");
            assert_eq!(
                read(&format!("blobs/sha256/{long}")),
                b"long name",
                "{format}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_what_is_not_tar() {
        let path = std::env::temp_dir().join(format!("skiff-notar-{}", std::process::id()));
        std::fs::write(&path, vec![1u8; 2048]).unwrap();
        assert!(scan(&path).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
