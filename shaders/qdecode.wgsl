// Decoding of the packed weight layout shared by qmatmul.wgsl and qgemv.wgsl (appended to
// either; it uses their `packed` and `info` bindings).
//
// `packed` holds, as u32 words: the codes (flat row-major over W [N, K], element i at bits
// (i % CPW) · BITS of word i / CPW), then one f32 scale per block of BLOCK elements (bit-cast)
// from word info[3], then, for formats with an offset (Q4_1), one f32 min per block from word
// info[4]. A value is
//   deq(i) = decode(code(i)) · scale[i / BLOCK] + min[i / BLOCK]
// which is bitsandbytes' NF4 (`code[c] · absmax`) and ggml's Q4_0 (`(c - 8) · d`), Q4_1
// (`c · d + m`) and Q8_0 (`i8(c) · d`).
//
// Template values: FORMAT (0 NF4, 1 Q4_0, 2 Q4_1, 3 Q8_0), BITS (4 or 8), BLOCK (elements per
// scale). The host checks K % 16 == 0 and BLOCK % 4 == 0: every aligned group of 4 values then
// lies in one block and one word.

const FORMAT: u32 = {{ format }}u;
const BITS: u32 = {{ bits }}u;
const BLOCK: u32 = {{ block }}u;

const CPW: u32 = 32u / BITS;          // codes per u32 word
const MASK: u32 = (1u << BITS) - 1u;

// bitsandbytes' NF4 code table (get_4bit_type("nf4")), exact fp32 values.
var<private> NF4: array<f32, 16> = array<f32, 16>(
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
);

fn decode(c: u32) -> f32 {
    if FORMAT == 0u {
        return NF4[c];
    } else if FORMAT == 1u {
        return f32(i32(c) - 8);
    } else if FORMAT == 3u {
        return f32(bitcast<i32>(c << 24u) >> 24u);
    }
    return f32(c);
}

// The four dequantized values W[row, col .. col + 4] (col % 4 == 0: one block, one word).
fn deq4(row: u32, col: u32, k: u32) -> vec4<f32> {
    let i = row * k + col;
    let word = packed[i / CPW];
    let shift = (i % CPW) * BITS;
    let blk = i / BLOCK;
    let scale = bitcast<f32>(packed[info[3] + blk]);
    var lo = 0.0;
    if FORMAT == 2u {
        lo = bitcast<f32>(packed[info[4] + blk]);
    }
    return vec4<f32>(
        decode((word >> shift) & MASK),
        decode((word >> (shift + BITS)) & MASK),
        decode((word >> (shift + 2u * BITS)) & MASK),
        decode((word >> (shift + 3u * BITS)) & MASK),
    ) * scale + vec4<f32>(lo);
}
