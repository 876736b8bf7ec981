// Appended to the kernels whose loops take their bounds from `info` and hold barriers
// (block_rotate.wgsl, qmatmul.wgsl).
//
// `uniform_info(t)`: the first 5 words of the kernel's `info` binding, loaded once per workgroup
// through workgroupUniformLoad. Values read from a read_write storage buffer are non-uniform to
// WGSL's uniformity analysis (browsers' Tint enforces it, naga does not), and barriers must sit
// in uniform control flow.
var<workgroup> info_wg: array<u32, 5>;

fn uniform_info(t: u32) -> array<u32, 5> {
    if t < min(5u, arrayLength(&info)) {
        info_wg[t] = info[t];
    }
    return workgroupUniformLoad(&info_wg);
}
