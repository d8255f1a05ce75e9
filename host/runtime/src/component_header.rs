//! What a plugin file is, read from its first bytes, before anything compiles it: the readable
//! refusal for a file that is not a WebAssembly component at all.
//!
//! Invariants:
//! - A component (`\0asm`, version `0x0d`, layer 1) passes; the compiler judges the rest.
//! - Anything else is refused with a message that names what the file is (as far as its first
//!   bytes tell), shows those bytes in hex, and says what to do, never a parser's debug dump.
//! - Reads at most the first eight bytes; runs on every load path (file at start, file drop,
//!   `PUT .../plugin`, the author's `projector plugin test`) since they all go through
//!   [`crate::Runtime`]'s one loader.

/// The WebAssembly binary magic, `\0asm`.
const MAGIC: &[u8; 4] = b"\0asm";

/// The component encoding's version and layer fields (after the magic).
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];

/// A core module's version and layer fields.
const CORE_MODULE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// Why `bytes` cannot be a component, or `None` when its header is a component's.
pub fn refusal(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return Some("not a valid WebAssembly component: the file is empty".to_owned());
    }
    if !bytes.starts_with(MAGIC) {
        let shown = hex(&bytes[..bytes.len().min(4)]);
        let guess = match guess(bytes) {
            Some(what) => format!(" ({what}?)"),
            None => String::new(),
        };
        return Some(format!(
            "not a valid WebAssembly component: file starts with bytes {shown}{guess}, not the \
             WebAssembly magic 00 61 73 6d (\"\\0asm\")"
        ));
    }
    let version = bytes.get(4..8);
    match version {
        Some(v) if v == COMPONENT_VERSION => None,
        Some(v) if v == CORE_MODULE_VERSION => Some(
            "a core WebAssembly module, not a component: build the plugin with \
             `--target wasm32-wasip2`, or wrap the module with `wasm-tools component new`"
                .to_owned(),
        ),
        Some(v) if v[2..] == [0x01, 0x00] => Some(format!(
            "a WebAssembly component of encoding version {} (bytes {}), which this projector \
             does not read: it reads version 13 (0d 00 01 00); rebuild the plugin with the \
             toolchain the plugin guide names",
            u16::from_le_bytes([v[0], v[1]]),
            hex(v)
        )),
        Some(v) => Some(format!(
            "not a valid WebAssembly component: after the magic, version and layer bytes {} are \
             neither a component's (0d 00 01 00) nor a core module's (01 00 00 00)",
            hex(v)
        )),
        None => Some(format!(
            "not a valid WebAssembly component: the file is {} bytes long, shorter than a \
             WebAssembly header",
            bytes.len()
        )),
    }
}

/// What a file starting with `bytes` (and not with the WebAssembly magic) probably is.
fn guess(bytes: &[u8]) -> Option<&'static str> {
    const KNOWN: &[(&[u8], &str)] = &[
        (b"\x7fELF", "an ELF executable"),
        (b"MZ", "a Windows executable"),
        (b"\xcf\xfa\xed\xfe", "a Mach-O executable"),
        (b"\xfe\xed\xfa\xcf", "a Mach-O executable"),
        (b"\xca\xfe\xba\xbe", "a Mach-O universal binary"),
        (b"!<arch>", "a static library archive"),
        (b"PK\x03\x04", "a zip archive"),
        (b"\x1f\x8b", "a gzip file"),
        (b"#!", "a script"),
        (
            b"(component",
            "the component text format: compile it with `wasm-tools parse`",
        ),
        (
            b"(module",
            "the WebAssembly text format: compile it with `wasm-tools parse`",
        ),
        (b"{", "a JSON file"),
        (b"<", "an HTML or XML page (a download that failed?)"),
    ];
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    let text = &bytes[start..];
    KNOWN
        .iter()
        .find(|(prefix, _)| bytes.starts_with(prefix) || text.starts_with(prefix))
        .map(|(_, what)| *what)
}

/// `bytes` as space-separated lowercase hex pairs.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn an_elf_executable_is_named_with_its_first_bytes() {
        let message = refusal(b"\x7fELF\x02\x01\x01\0rest").expect("refused");
        assert_eq!(
            message,
            "not a valid WebAssembly component: file starts with bytes 7f 45 4c 46 (an ELF \
             executable?), not the WebAssembly magic 00 61 73 6d (\"\\0asm\")"
        );
    }

    #[test]
    fn a_core_module_is_told_how_to_become_a_component() {
        let message = refusal(b"\0asm\x01\0\0\0").expect("refused");
        assert!(
            message.starts_with("a core WebAssembly module, not a component"),
            "{message}"
        );
        assert!(message.contains("wasm32-wasip2"), "{message}");
        assert!(message.contains("wasm-tools component new"), "{message}");
    }

    #[test]
    fn a_component_header_passes_and_odd_headers_are_described() {
        assert_eq!(refusal(b"\0asm\x0d\0\x01\0"), None);
        assert!(refusal(b"").expect("refused").contains("empty"));
        assert!(refusal(b"\0asm\x0d")
            .expect("refused")
            .contains("5 bytes long"));
        let older = refusal(b"\0asm\x0c\0\x01\0").expect("refused");
        assert!(
            older.contains("encoding version 12 (bytes 0c 00 01 00)"),
            "{older}"
        );
        let text = refusal(b"\n  (component\n)").expect("refused");
        assert!(
            text.contains("0a 20 20 28 (the component text format"),
            "{text}"
        );
        let unknown = refusal(b"hello").expect("refused");
        assert!(unknown.contains("68 65 6c 6c,"), "{unknown}");
    }
}
