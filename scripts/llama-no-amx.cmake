# Build llama-cpp-python's llama.cpp without its AMX kernels, on x86 only:
#   CMAKE_ARGS="-DCMAKE_PROJECT_INCLUDE=$PWD/scripts/llama-no-amx.cmake" pip install ...
# With GGML_NATIVE (the default) ggml compiles its AMX buffer type whenever -march=native
# defines __AMX_INT8__, and on this project's CI machines (Intel AMX) its matmul segfaults on
# the first decode (llama.cpp #20824). An explicit -mno-amx-* wins over -march=native in GCC
# and Clang whatever the order, so AVX-512, VNNI and the repacked Q4_0 kernels stay.
# Elsewhere (ARM: a Raspberry Pi) this file changes nothing.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i[3-6]86)$")
  add_compile_options(-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
endif()
