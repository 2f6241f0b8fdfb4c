//! Host bindings generated from the WIT packages: `wit/rules.wit` (0.2.0) and
//! `wit/v0.1.0/rules.wit` (0.1.0), loaded side by side.

/// `downsync:rules@0.2.0`.
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        world: "rule",
        path: "../wit/rules.wit",
    });
}

/// `downsync:rules@0.1.0`, frozen: components built against it keep loading unchanged.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        world: "rule",
        path: "../wit/v0.1.0/rules.wit",
    });
}
