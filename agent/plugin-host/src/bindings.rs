//! Host-side bindings generated from `wit/pipeline.wit`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
});
