// wgpu 30's WebGPU backend does not know the "subgroups" feature, so it never requests it, but
// burn's matmul kernels (cubecl) declare subgroup builtins and `enable subgroups;` in the
// browser. Ask for the feature on every device whose adapter has it (imported by the page and by
// the training worker).
if (globalThis.GPUAdapter) {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = function (desc) {
    desc = desc || {};
    if (this.features.has("subgroups")) {
      const features = new Set(desc.requiredFeatures || []);
      features.add("subgroups");
      desc = Object.assign({}, desc, { requiredFeatures: [...features] });
    }
    return requestDevice.call(this, desc);
  };
}
