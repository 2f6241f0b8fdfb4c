//! What a component imports, read from its bytes before it is compiled: a component that
//! needs what the sandbox does not offer is refused in milliseconds, not after a compile that
//! can take half a minute (an interpreter built into a component), naming what it lacks.

use wasmparser::{Parser, Payload};

use super::error::{Error, Result};

/// The import packages the sandbox offers, with the versions it accepts. WASI is offered at
/// 0.2.x (every interface of `wasi:cli`, `wasi:clocks`, `wasi:filesystem`, `wasi:io`,
/// `wasi:random` and `wasi:sockets`, most of them denied at run time: no files, no network, a
/// frozen clock); `downsync:rules` at 0.1.0 and 0.2.0.
pub(super) const OFFERED: [(&str, &str); 7] = [
    ("wasi:cli", "0.2"),
    ("wasi:clocks", "0.2"),
    ("wasi:filesystem", "0.2"),
    ("wasi:io", "0.2"),
    ("wasi:random", "0.2"),
    ("wasi:sockets", "0.2"),
    ("downsync:rules", "0.1.0 or 0.2.0"),
];

/// The top-level imports of a component, as written (`wasi:io/streams@0.2.6`). `None` when the
/// bytes are not a component that can be read: the compiler then says why.
pub(super) fn imports(bytes: &[u8]) -> Option<Vec<String>> {
    if !Parser::is_component(bytes) {
        return None;
    }
    let mut depth = 0usize;
    let mut names = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    names.push(import.ok()?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Some(names)
}

/// Whether the sandbox offers one import.
fn offered(name: &str) -> bool {
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    let package = path.split_once('/').map_or(path, |(p, _)| p);
    match package {
        "downsync:rules" => matches!(version, "0.1.0" | "0.2.0"),
        "wasi:cli" | "wasi:clocks" | "wasi:filesystem" | "wasi:io" | "wasi:random" | "wasi:sockets" => {
            version == "0.2" || version.starts_with("0.2.")
        }
        _ => false,
    }
}

/// Refuses a component that imports what the sandbox does not offer, naming the imports it
/// lacks and what is offered.
pub(super) fn check(label: &str, bytes: &[u8]) -> Result<()> {
    let not = |what: &'static str| Err(Error::NotAComponent { plugin: label.to_string(), what });
    if Parser::is_core_wasm(bytes) {
        return not(
            "a core WebAssembly module, not a component: build it for wasm32-wasip2, or wrap it with `wasm-tools component new`",
        );
    }
    if !bytes.starts_with(b"\0asm") {
        return not("not a WebAssembly file (it does not begin with \\0asm)");
    }
    let Some(names) = imports(bytes) else { return Ok(()) };
    let missing: Vec<String> = names.into_iter().filter(|n| !offered(n)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let offered = OFFERED.iter().map(|(p, v)| format!("{p}@{v}")).collect::<Vec<_>>().join(", ");
    Err(Error::Imports { plugin: label.to_string(), missing, offered })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{Component, ComponentImportSection, ComponentTypeRef, ComponentTypeSection, InstanceType};

    fn mk_component(imports: &[&str]) -> Vec<u8> {
        let mut c = Component::new();
        let mut types = ComponentTypeSection::new();
        types.instance(&InstanceType::new());
        c.section(&types);
        let mut section = ComponentImportSection::new();
        for name in imports {
            section.import(*name, ComponentTypeRef::Instance(0));
        }
        c.section(&section);
        c.finish()
    }

    #[test]
    fn what_the_sandbox_lacks_is_named_before_any_compile() {
        let ok = mk_component(&["wasi:io/streams@0.2.6", "wasi:cli/stdout@0.2.0", "downsync:rules/host@0.2.0"]);
        assert_eq!(imports(&ok).map(|n| n.len()), Some(3));
        assert!(check("fine", &ok).is_ok());
        let http = mk_component(&["wasi:io/streams@0.2.10", "wasi:http/types@0.2.10", "wasi:io/poll@0.3.0"]);
        let err = check("starlingmonkey", &http).expect_err("wasi:http is not offered");
        let msg = err.to_string();
        assert!(msg.contains("starlingmonkey") && msg.contains("wasi:http/types@0.2.10"), "{msg}");
        assert!(msg.contains("wasi:io/poll@0.3.0") && !msg.contains("streams@0.2.10,"), "{msg}");
        assert!(msg.contains("wasi:io@0.2"), "names what is offered: {msg}");
        assert!(check("old", &mk_component(&["downsync:rules/host@0.3.0"])).is_err());
    }

    #[test]
    fn a_file_that_is_no_component_is_named_in_one_line_before_any_compile() {
        assert_eq!(imports(b"\0asm but not really"), None);
        let err = check("garbage", b"hello\n").expect_err("not wasm").to_string();
        assert_eq!(err, "plugin garbage: not a WebAssembly file (it does not begin with \\0asm)");
        let core = wasm_encoder::Module::new().finish();
        let err = check("core", &core).expect_err("a core module").to_string();
        assert!(err.contains("a core WebAssembly module, not a component") && !err.contains('\n'), "{err}");
        assert!(check("odd", b"\0asm of another version").is_ok(), "left to the compiler to explain");
    }
}
