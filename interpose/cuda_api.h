// CUDA declarations for the interposers.
//
// Where the CUDA toolkit headers are installed (JITC_HAVE_CUDA_HEADERS), the real ones are
// used, so the compiler checks every wrapper against NVIDIA's own prototype. Without them
// (a CPU-only CI machine) the few types the wrappers need are declared here; the values
// below are fixed by the CUDA ABI and never change between releases.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(JITC_HAVE_CUDA_HEADERS)
#include <cuda.h>
#include <cuda_runtime_api.h>
// cuda.h maps the legacy names onto the versioned ones; we export both spellings by hand.
#undef cuGetProcAddress
#else
extern "C" {
// Distinct enum types, as in the real headers, so overloads on them stay distinct.
typedef enum cudaError { cudaSuccess = 0, cudaErrorInsufficientDriver = 35,
                         cudaErrorNotReady = 600, cudaErrorIllegalAddress = 700 } cudaError_t;
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
struct dim3 { unsigned int x, y, z; };
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1,
                      cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3,
                      cudaMemcpyDefault = 4 };
enum cudaDriverEntryPointQueryResult { cudaDriverEntryPointSuccess = 0 };
enum : unsigned int { cudaEventDisableTiming = 0x02, cudaStreamNonBlocking = 0x01,
                      cudaHostAllocPortable = 0x01 };

typedef enum cudaError_enum { CUDA_SUCCESS = 0, CUDA_ERROR_NOT_INITIALIZED = 3,
                              CUDA_ERROR_ILLEGAL_ADDRESS = 700 } CUresult;
typedef struct CUstream_st* CUstream;
typedef struct CUevent_st* CUevent;
typedef struct CUfunc_st* CUfunction;
typedef unsigned long long CUdeviceptr;
typedef uint64_t cuuint64_t;
enum CUdriverProcAddressQueryResult { CU_GET_PROC_ADDRESS_SUCCESS = 0 };
enum : int { CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM = 1 << 1 };
}
#endif
