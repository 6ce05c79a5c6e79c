# One static library per layer of src/, linked bottom-up, with include paths that make the layering
# a build rule rather than a convention. Each layer compiles against a view of src/ (a folder of
# symbolic links under build/layers/<layer>/) holding only its own folders and those of the layers
# below it: an `#include "model/..."` in src/kv/ is then a "No such file" error, not a silent
# dependency cycle.
#
#   qleap_layer(NAME PATHS p... [DEPS layer...] [LIBS target...] [EXCLUDE regex...])
# PATHS are folders or single files relative to src/; a folder contributes its .cpp (and, with CUDA,
# .cu) sources recursively and all of its headers to the views of this layer and those above.
set(QLEAP_SRC_DIR ${CMAKE_SOURCE_DIR}/src)

function(qleap_layer name)
  cmake_parse_arguments(L "" "" "PATHS;DEPS;LIBS;EXCLUDE" ${ARGN})
  set(srcs)
  foreach(p ${L_PATHS})
    set(abs ${QLEAP_SRC_DIR}/${p})
    if(IS_DIRECTORY ${abs})
      set(patterns ${abs}/*.cpp)
      if(QLEAP_CUDA_ENABLED)
        list(APPEND patterns ${abs}/*.cu)
      endif()
      file(GLOB_RECURSE s CONFIGURE_DEPENDS ${patterns})
    elseif(p MATCHES "\\.(cpp|cu)$")
      set(s ${abs})
    else()
      set(s)
    endif()
    list(APPEND srcs ${s})
  endforeach()
  foreach(rx ${L_EXCLUDE})
    list(FILTER srcs EXCLUDE REGEX "${rx}")
  endforeach()
  if(NOT srcs)
    message(FATAL_ERROR "qleap_layer(${name}): no sources under ${L_PATHS}")
  endif()
  add_library(${name} STATIC ${srcs})

  # This layer's paths plus everything below it.
  set(visible ${L_PATHS})
  foreach(d ${L_DEPS})
    get_property(dp GLOBAL PROPERTY QLEAP_VISIBLE_${d})
    list(APPEND visible ${dp})
  endforeach()
  list(REMOVE_DUPLICATES visible)
  set_property(GLOBAL PROPERTY QLEAP_VISIBLE_${name} ${visible})

  set(view ${CMAKE_BINARY_DIR}/layers/${name})
  file(REMOVE_RECURSE ${view})
  foreach(p ${visible})
    get_filename_component(parent ${view}/${p} DIRECTORY)
    file(MAKE_DIRECTORY ${parent})
    file(CREATE_LINK ${QLEAP_SRC_DIR}/${p} ${view}/${p} SYMBOLIC)
  endforeach()
  target_include_directories(${name} PRIVATE ${view})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${QLEAP_WARN}>)
  target_link_libraries(${name} PUBLIC ${L_DEPS} ${L_LIBS})

  # ISA-specific kernels are compiled with their own flags and chosen at run time (core/cpu_features).
  foreach(f ${srcs})
    if(f MATCHES "_avx2\\.cpp$")
      set_source_files_properties(${f} PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mbmi2")
    elseif(f MATCHES "_avx512\\.cpp$")
      set_source_files_properties(${f} PROPERTIES COMPILE_OPTIONS
        "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vnni;-mavx512bf16;-mfma;-mf16c;-mavx2;-mbmi2")
    elseif(f MATCHES "_amx\\.cpp$")
      set_source_files_properties(${f} PROPERTIES COMPILE_OPTIONS
        "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vnni;-mavx512bf16;-mfma;-mf16c;-mavx2;-mbmi2;-mamx-tile;-mamx-int8;-mamx-bf16")
    endif()
  endforeach()
  set_property(GLOBAL APPEND PROPERTY QLEAP_LAYERS ${name})
endfunction()
