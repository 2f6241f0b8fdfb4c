//! Host bindings generated from `wit/rules.wit`.

wasmtime::component::bindgen!({
    world: "rule",
    path: "../wit",
});
