// The copy kernel `unicorn-rt --bench` measures a GPU's memory bandwidth with: every invocation moves 16-byte
// words from `src` to `dst`, a grid-stride loop over `n` of them. Compiled to copy.spv (committed beside this
// file; a test in unicorn-targets checks that the SPIR-V is this source compiled).
#version 450
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer Src { uvec4 src[]; };
layout(std430, binding = 1) buffer Dst { uvec4 dst[]; };
layout(push_constant) uniform Push { uint n; } pc;
void main() {
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += gl_NumWorkGroups.x * 256u) dst[i] = src[i];
}
