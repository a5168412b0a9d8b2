//! `.npy` files as plugin tensors (`run-local --npy NAME=FILE.npy`); the format itself is read by
//! [`tern_infer::npy`].

use tern_plugin_host::Tensor;

/// Parses `.npy` bytes into a plugin tensor called `name`.
pub fn parse(name: &str, bytes: &[u8]) -> Result<Tensor, String> {
    let tensor = tern_infer::npy::parse(name, bytes).map_err(|e| e.to_string())?;
    crate::tensors::to_plugin(tensor)
}
