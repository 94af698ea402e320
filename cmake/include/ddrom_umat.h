/* ddrom UMAT plugin ABI (C calling convention).
 *
 * A plugin is a shared library holding this driver and one Abaqus-style UMAT. ddrom
 * loads it with ctypes, checks ddrom_umat_abi_version() == DDROM_UMAT_ABI_VERSION and
 * makes ONE call of ddrom_umat_batch() per block of integration points.
 *
 * Conventions (those of Abaqus/Standard, 3D solids, NTENS = 6, NDI = NSHR = 3):
 *   - stress order 11, 22, 33, 12, 13, 23;
 *   - strains in the same order with ENGINEERING shears (gamma_12 = 2 eps_12);
 *   - STRAN is the mechanical strain at the start of the increment and DSTRAN its
 *     increment (ddrom subtracts its own thermal strain first when the case gives alpha);
 *   - DDSDDE(i, j) = d(delta stress_i) / d(delta strain_j), Fortran column-major, that
 *     is element (i, j) at offset i + 6 j of a point's 36 doubles.
 * Point k uses stran + 6k, dstran + 6k, stress + 6k, statev + nstatv k, ddsdde + 36k,
 * temp[k], dtemp[k]; props are shared by all points.
 */
#ifndef DDROM_UMAT_H
#define DDROM_UMAT_H

#include <stddef.h>

#define DDROM_UMAT_ABI_VERSION 1

/* Status returned by ddrom_umat_batch */
#define DDROM_UMAT_OK 0
#define DDROM_UMAT_EBADARG (-1)

#ifdef __cplusplus
extern "C" {
#endif

/* The user's material routine, Abaqus signature, Fortran calling convention (every
 * argument by reference, trailing hidden length of CMNAME; gfortran >= 8 passes it as size_t). */
void umat_(double *stress, double *statev, double *ddsdde, double *sse, double *spd, double *scd,
           double *rpl, double *ddsddt, double *drplde, double *drpldt, const double *stran,
           const double *dstran, const double *time, const double *dtime, const double *temp,
           const double *dtemp, const double *predef, const double *dpred, const char *cmname,
           const int *ndi, const int *nshr, const int *ntens, const int *nstatv, const double *props,
           const int *nprops, const double *coords, const double *drot, double *pnewdt,
           const double *celent, const double *dfgrd0, const double *dfgrd1, const int *noel,
           const int *npt, const int *layer, const int *kspt, const int *kstep, const int *kinc,
           size_t cmname_len);

/* The ABI version this library was built with (DDROM_UMAT_ABI_VERSION). */
int ddrom_umat_abi_version(void);

/* Integrate one increment at n points: calls umat_ once per point, in order.
 *
 * stran, dstran : n*6, mechanical strain at the start and its increment (Abaqus order, engineering shears)
 * stress        : n*6, in: stress at the start of the increment; out: at the end
 * statev        : n*nstatv, in: state variables at the start; out: at the end
 * ddsdde        : n*36, out: consistent tangent (column-major per point, see above)
 * props, nprops : material properties (shared)
 * temp, dtemp   : n, temperature at the start and its increment
 * time0, dtime  : time at the start of the increment (passed as TIME(1) = TIME(2)) and increment
 * cmname        : material name, NUL-terminated (passed blank-padded to 80 characters); may be NULL
 * info          : out, number of points whose UMAT asked for a smaller increment (PNEWDT < 1)
 * Returns DDROM_UMAT_OK, or DDROM_UMAT_EBADARG (n < 0, nstatv < 0, nprops < 0, a NULL array).
 */
int ddrom_umat_batch(int n, const double *stran, const double *dstran, double *stress, double *statev,
                     int nstatv, double *ddsdde, const double *props, int nprops, const double *temp,
                     const double *dtemp, double time0, double dtime, const char *cmname, int *info);

#ifdef __cplusplus
}
#endif

#endif
