// The safetensors header of one stripe file, built natively (no Python, invariant I5).
//
// Layout (the format the `safetensors` package reads): 8-byte little-endian header length
// N, then N bytes of JSON, then the data section. The JSON maps each key to
// {dtype, shape, data_offsets [begin, end)} relative to the data section, and carries a
// "__metadata__" string->string map. We pad the JSON with spaces so the data section starts
// at a multiple of 8, which keeps a zero-copy (mmap) load of any tensor aligned.
#include <cstring>
#include <string>
#include <vector>

#include "snapshot/header.h"
#include "snapshot/internal.h"

namespace jitc::snapshot {
namespace {

std::string shape_json(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

void add_tensor(std::string& js, const std::string& key, const std::string& dtype,
                const std::string& shape, uint64_t begin, uint64_t end) {
  js += ",\"" + json_escape(key) + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
        ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

}  // namespace

StripeLayout build_stripe_layout(const Generation& gen, const std::vector<Chunk>& chunks,
                                 const std::string& meta, int64_t step, int stripe,
                                 int nstripes) {
  StripeLayout out;
  // Full shapes of the tensors that are split: a piece is 1-D, so the loader needs them.
  std::string shapes = "{";
  bool first = true;
  for (const Chunk& c : chunks) {
    const Entry& e = gen.entries[c.index];
    if (c.key == e.name) continue;
    if (!first) shapes += ",";
    first = false;
    shapes += "\"" + json_escape(e.name) + "\":" + shape_json(e.shape);
  }
  shapes += "}";

  std::string js = "{\"__metadata__\":{\"format\":\"" + std::string(kFormat) +
                   "\",\"step\":\"" + std::to_string(step) + "\",\"stripe\":\"" +
                   std::to_string(stripe) + "\",\"nstripes\":\"" + std::to_string(nstripes) +
                   "\",\"fingerprint\":\"" + gen.fingerprint + "\",\"shapes\":\"" +
                   json_escape(shapes) + "\"}";
  uint64_t off = 0;
  for (const Chunk& c : chunks) {
    const Entry& e = gen.entries[c.index];
    const uint64_t es = dtype_size(e.dtype);
    const uint64_t n = (c.end - c.start) * es;
    const std::string shape =
        c.key == e.name ? shape_json(e.shape) : "[" + std::to_string(c.end - c.start) + "]";
    add_tensor(js, c.key, e.dtype, shape, off, off + n);
    out.pieces.push_back(Piece{static_cast<const char*>(e.ptr) + c.start * es, n, e.device});
    off += n;
  }
  // The meta blob goes whole into every stripe: it is small, and this way the stripe
  // assignment stays a pure function of the registry (meta length may change per step).
  add_tensor(js, kMetaKey, "U8", "[" + std::to_string(meta.size()) + "]", off,
             off + meta.size());
  out.pieces.push_back(Piece{meta.data(), meta.size(), -1});
  off += meta.size();
  js += "}";
  while ((8 + js.size()) % 8) js += ' ';

  const uint64_t n = js.size();
  out.header.resize(8);
  for (int i = 0; i < 8; ++i) out.header[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  out.header += js;
  out.data_bytes = off;
  out.nkeys = chunks.size() + 1;
  return out;
}

}  // namespace jitc::snapshot
