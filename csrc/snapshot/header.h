// Private: the byte layout of one stripe file (safetensors header + the pieces to write).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "snapshot/engine.h"
#include "snapshot/internal.h"

namespace jitc::snapshot {

// A contiguous run of bytes to write, in file order: host memory (device -1) or CUDA memory.
struct Piece {
  const char* src;
  uint64_t nbytes;
  int device;
};

struct StripeLayout {
  std::string header;          // 8-byte length + padded JSON, written first
  std::vector<Piece> pieces;   // data section, in order (the meta blob last)
  uint64_t data_bytes = 0;
  size_t nkeys = 0;            // tensor keys in the file, meta included
};

// WARNING: the pieces point into gen's tensors and into meta; keep both alive while writing.
StripeLayout build_stripe_layout(const Generation& gen, const std::vector<Chunk>& chunks,
                                 const std::string& meta, int64_t step, int stripe,
                                 int nstripes);

}  // namespace jitc::snapshot
