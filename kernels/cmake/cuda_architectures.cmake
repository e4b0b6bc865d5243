# The GPU architectures that the CUDA kernels are compiled for, when the user names none
# (-DCMAKE_CUDA_ARCHITECTURES=..., or the CUDAARCHS environment variable): the GPU of the machine
# that builds, else a list for distribution. Included by the top-level CMakeLists.txt after
# check_language(CUDA) and before enable_language(CUDA); needs CMAKE_CUDA_COMPILER.
#
# The build machine's GPU is found without CMake's "native" (CMake >= 3.24, and a configure error
# when the CUDA runtime finds no usable GPU): nvidia-smi's compute capabilities on desktops,
# servers and JetPack 6; on a Jetson without them (JetPack 5) the SoC named in the device tree.
# An architecture that this nvcc cannot target (CUDA 13 dropped sm_72, Xavier) falls back to the
# list, with a warning.

# sm_XX of every GPU that nvidia-smi lists, or of the Jetson's integrated GPU, or nothing.
function(segdeploy_detect_gpu_architectures out)
  set(found "")
  find_program(SEGDEPLOY_NVIDIA_SMI nvidia-smi)
  mark_as_advanced(SEGDEPLOY_NVIDIA_SMI)
  if(SEGDEPLOY_NVIDIA_SMI)
    execute_process(COMMAND "${SEGDEPLOY_NVIDIA_SMI}" --query-gpu=compute_cap --format=csv,noheader
                    RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_QUIET TIMEOUT 20)
    if(result EQUAL 0)
      string(REGEX MATCHALL "[0-9]+\\.[0-9]+" capabilities "${output}")  # "[N/A]" on some iGPUs
      foreach(capability IN LISTS capabilities)
        string(REPLACE "." "" architecture "${capability}")
        list(APPEND found ${architecture})
      endforeach()
    endif()
  endif()
  if(NOT found AND EXISTS /proc/device-tree/compatible)
    file(READ /proc/device-tree/compatible compatible)  # NUL-separated, e.g. ...nvidia,tegra234
    if(compatible MATCHES "nvidia,tegra194")      # Jetson AGX Xavier, Xavier NX
      set(found 72)
    elseif(compatible MATCHES "nvidia,tegra234")  # Jetson AGX Orin, Orin NX, Orin Nano
      set(found 87)
    endif()
  endif()
  if(found)
    list(REMOVE_DUPLICATES found)
  endif()
  set(${out} "${found}" PARENT_SCOPE)
endfunction()

# sm_XX that this nvcc can compile for (nvcc --list-gpu-arch, CUDA >= 11.0), or nothing if unknown.
function(segdeploy_nvcc_architectures out)
  execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --list-gpu-arch
                  RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_QUIET TIMEOUT 60)
  set(supported "")
  if(result EQUAL 0)
    string(REGEX MATCHALL "compute_[0-9]+" names "${output}")
    foreach(name IN LISTS names)
      string(REPLACE "compute_" "" architecture "${name}")
      list(APPEND supported ${architecture})
    endforeach()
  endif()
  set(${out} "${supported}" PARENT_SCOPE)
endfunction()

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
  # For distribution: Jetson Xavier (72, CUDA <= 12) and Orin (87), Turing to Hopper. Each entry
  # is SASS and PTX (newer GPUs, Blackwell among them, run the PTX of 90 through the driver's
  # JIT); every architecture adds a full compile of the kernels, which CI does on 2 cores.
  set(candidates 72 75 80 86 87 89 90)
  segdeploy_nvcc_architectures(supported)
  if(NOT supported)  # an nvcc that cannot list them: what every nvcc from 11.4 (JetPack 5) to 12 targets
    set(supported 72 75 80 86 87)
  endif()
  segdeploy_detect_gpu_architectures(present)
  set(unsupported ${present})
  list(REMOVE_ITEM unsupported ${supported})
  if(present AND NOT unsupported)
    set(CMAKE_CUDA_ARCHITECTURES ${present})
    message(STATUS "CUDA architectures: ${present}, this machine's GPU (set CMAKE_CUDA_ARCHITECTURES to override)")
  else()
    set(CMAKE_CUDA_ARCHITECTURES "")
    foreach(architecture IN LISTS candidates)
      if(architecture IN_LIST supported)
        list(APPEND CMAKE_CUDA_ARCHITECTURES ${architecture})
      endif()
    endforeach()
    if(unsupported)
      message(WARNING "This machine's GPU (sm_${unsupported}) is not a target of ${CMAKE_CUDA_COMPILER} "
                      "(nvcc --list-gpu-arch); building for ${CMAKE_CUDA_ARCHITECTURES} instead, which cannot run "
                      "on it. Build with a CUDA toolkit that targets it (sm_72: CUDA 11.4 to 12.x).")
    else()
      message(STATUS "CUDA architectures: ${CMAKE_CUDA_ARCHITECTURES} (no GPU found on this machine; set "
                     "CMAKE_CUDA_ARCHITECTURES to override)")
    endif()
  endif()
endif()
