# Cross-compiles the kernels for 64-bit ARM (the Jetson's CPU) with Debian's g++-aarch64-linux-gnu,
# and runs what it builds (ctest) under qemu-user:
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=kernels/cmake/toolchain-aarch64.cmake \
#         -DSEGDEPLOY_WITH_CUDA=OFF -DSEGDEPLOY_BUILD_TESTS=ON
# kernels/tests/cross_aarch64.sh does this and runs the C++ tests.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(SEGDEPLOY_AARCH64_TRIPLE aarch64-linux-gnu CACHE STRING "GNU triple of the aarch64 cross compiler")
set(CMAKE_C_COMPILER ${SEGDEPLOY_AARCH64_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${SEGDEPLOY_AARCH64_TRIPLE}-g++)

# Debian's multiarch cross root: the target's libc, libstdc++ and headers.
set(SEGDEPLOY_AARCH64_SYSROOT /usr/${SEGDEPLOY_AARCH64_TRIPLE} CACHE PATH "Root of the aarch64 libraries")
set(CMAKE_FIND_ROOT_PATH ${SEGDEPLOY_AARCH64_SYSROOT})
# Programs from the build machine; headers, libraries and packages from the target's root only, so
# that no x86-64 library (CUDA's among them) is picked up: the CUDA-dependent targets are skipped.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# ctest (and add_test's commands) run the target's executables through qemu, with the target's
# dynamic loader and libraries from the cross root.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;${SEGDEPLOY_AARCH64_SYSROOT})
