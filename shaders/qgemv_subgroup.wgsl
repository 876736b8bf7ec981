// Entry point of qgemv.wgsl on devices with subgroups: every subgroup adds up its lanes'
// partial dot products with subgroupAdd, its first lane leaves the sums in workgroup memory,
// and M invocations add up the subgroups (at most 64 of them, for a subgroup size of 1).

var<workgroup> sums: array<vec4<f32>, 512>;   // [subgroup][row]

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) n_sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let c0 = wg.x * COLS;
    let acc = partial_dots(t, c0);
    for (var i = 0u; i < MAXM; i++) {
        let s = subgroupAdd(acc[i]);
        if lane == 0u {
            sums[sg * MAXM + i] = s;
        }
    }
    workgroupBarrier();
    if t < info[0] {
        var v = vec4<f32>(0.0);
        for (var s = 0u; s < n_sg; s++) {
            v += sums[s * MAXM + t];
        }
        write_row(t, c0, v);
    }
}
