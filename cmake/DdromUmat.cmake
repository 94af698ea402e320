# ddrom_add_umat_plugin(<name> SOURCES <file>... [OUTPUT_DIRECTORY <dir>])
#
# Builds the shared library lib<name>.so: ddrom's batch driver (C ABI, see
# include/ddrom_umat.h) linked with one Abaqus-style UMAT given by SOURCES (C, or
# Fortran fixed/free form: .f .for .f90 ...). Fortran sources see include/ABA_PARAM.INC,
# so UMATs written for Abaqus compile unchanged. The library has no undefined
# references left (-Wl,--no-undefined): a UMAT source without a `umat` routine fails at
# link time, not when ddrom loads it.
set(DDROM_UMAT_DIR "${CMAKE_CURRENT_LIST_DIR}")

function(ddrom_add_umat_plugin name)
  cmake_parse_arguments(ARG "" "OUTPUT_DIRECTORY" "SOURCES" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "ddrom_add_umat_plugin(${name}): no SOURCES")
  endif()
  foreach(src IN LISTS ARG_SOURCES)
    if(src MATCHES "\\.(f|F|for|FOR|f77|F77|f90|F90|f95|F95|f03|F03|f08|F08)$")
      get_property(langs GLOBAL PROPERTY ENABLED_LANGUAGES)
      if(NOT "Fortran" IN_LIST langs)
        message(FATAL_ERROR "ddrom_add_umat_plugin(${name}): ${src} is Fortran but no Fortran "
                            "compiler was found (Debian: apt-get install gfortran)")
      endif()
    endif()
  endforeach()
  add_library(${name} SHARED "${DDROM_UMAT_DIR}/driver/ddrom_umat_driver.c" ${ARG_SOURCES})
  target_include_directories(${name} PRIVATE "${DDROM_UMAT_DIR}/include")
  # The driver calls umat_ (gfortran's name mangling of UMAT); keep C sources warning-free
  # about the unused Abaqus arguments, and fail at link time on a missing symbol.
  target_compile_options(${name} PRIVATE
    $<$<COMPILE_LANGUAGE:C>:-Wall -Wno-unused-parameter>
    $<$<COMPILE_LANGUAGE:Fortran>:-ffixed-line-length-none>)
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    target_link_options(${name} PRIVATE "-Wl,--no-undefined")
  endif()
  set_target_properties(${name} PROPERTIES C_STANDARD 11 POSITION_INDEPENDENT_CODE ON
                        C_VISIBILITY_PRESET default)
  target_link_libraries(${name} PRIVATE m)
  if(ARG_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${ARG_OUTPUT_DIRECTORY}")
  endif()
  install(TARGETS ${name} LIBRARY DESTINATION lib)
endfunction()
