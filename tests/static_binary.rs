//! The `stowage` binary is copied into arbitrary tool images (e.g. `postgres:17`), so it must
//! not need a dynamic loader or any shared library: no `PT_INTERP` program header and no
//! `DT_NEEDED` entry. (A static-PIE binary keeps a `PT_DYNAMIC` segment for relocating itself;
//! what matters is that it names no interpreter and no library.)

use std::convert::TryInto;

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// (p_type, p_offset, p_filesz) of every program header of a little-endian ELF64 file.
fn program_headers(elf: &[u8]) -> Vec<(u32, u64, u64)> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    assert_eq!(elf[5], 1, "not little-endian");
    let phoff = u64_at(elf, 0x20) as usize;
    let phentsize = u16_at(elf, 0x36) as usize;
    let phnum = u16_at(elf, 0x38) as usize;
    (0..phnum)
        .map(|i| {
            let h = phoff + i * phentsize;
            (u32_at(elf, h), u64_at(elf, h + 8), u64_at(elf, h + 0x20))
        })
        .collect()
}

fn needed_entries(elf: &[u8], offset: u64, size: u64) -> usize {
    let mut count = 0;
    let mut at = offset as usize;
    let end = (offset + size) as usize;
    while at + 16 <= end {
        let tag = u64_at(elf, at);
        if tag == DT_NULL {
            break;
        }
        if tag == DT_NEEDED {
            count += 1;
        }
        at += 16;
    }
    count
}

#[test]
fn the_stowage_binary_is_statically_linked() {
    let path = env!("CARGO_BIN_EXE_stowage");
    let elf = std::fs::read(path).expect("read the stowage binary");
    let headers = program_headers(&elf);
    assert!(!headers.is_empty(), "no program headers in {path}");
    assert!(
        !headers.iter().any(|(t, _, _)| *t == PT_INTERP),
        "{path} has a PT_INTERP header: it needs a dynamic loader (is +crt-static set in .cargo/config.toml?)"
    );
    let needed: usize = headers
        .iter()
        .filter(|(t, _, _)| *t == PT_DYNAMIC)
        .map(|(_, off, size)| needed_entries(&elf, *off, *size))
        .sum();
    assert_eq!(
        needed, 0,
        "{path} names {needed} shared libraries (DT_NEEDED)"
    );
}

#[test]
fn the_checker_recognises_a_dynamic_binary() {
    // The checker itself must be able to fail: /bin/sh on this machine is dynamic.
    let Ok(elf) = std::fs::read("/bin/sh") else {
        return;
    };
    let resolved = std::fs::canonicalize("/bin/sh").unwrap();
    let elf = if elf.starts_with(b"\x7fELF") {
        elf
    } else {
        std::fs::read(resolved).unwrap()
    };
    let headers = program_headers(&elf);
    assert!(headers.iter().any(|(t, _, _)| *t == PT_INTERP));
    let needed: usize = headers
        .iter()
        .filter(|(t, _, _)| *t == PT_DYNAMIC)
        .map(|(_, off, size)| needed_entries(&elf, *off, *size))
        .sum();
    assert!(needed > 0);
}

/// The binary allocates through jemalloc with the options of `src/main.rs` (one arena,
/// a background thread returning freed pages): `stats_print` added through the
/// environment makes jemalloc print the options in effect when the process exits.
#[test]
fn the_stowage_binary_allocates_through_jemalloc_with_its_options() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run stowage --version");
    assert!(out.status.success(), "{out:?}");
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.narenas: 1\n",
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 1000 (",
        "opt.muzzy_decay_ms: 0 (",
    ] {
        assert!(stats.contains(option), "{option:?} not in:\n{stats}");
    }
}
