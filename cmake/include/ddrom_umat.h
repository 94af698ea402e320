/* ddrom UMAT plugin ABI (C calling convention).
 *
 * A plugin is a shared library holding this driver and one Abaqus-style UMAT. ddrom
 * loads it with ctypes (when a run first needs the material, not while a case file is
 * being checked: a case naming a plugin runs that library's code), checks
 * ddrom_umat_abi_version() == DDROM_UMAT_ABI_VERSION and makes ONE call of
 * ddrom_umat_batch() per block of integration points.
 *
 * Conventions (those of Abaqus/Standard, 3D solids, NTENS = 6, NDI = NSHR = 3):
 *   - stress order 11, 22, 33, 12, 13, 23;
 *   - strains in the same order with ENGINEERING shears (gamma_12 = 2 eps_12);
 *   - STRAN is the mechanical strain at the start of the increment and DSTRAN its
 *     increment (ddrom subtracts its own thermal strain first when the case gives alpha);
 *   - DDSDDE(i, j) = d(delta stress_i) / d(delta strain_j), Fortran column-major, that
 *     is element (i, j) at offset i + 6 j of a point's 36 doubles. The driver zeroes it
 *     before each call: a UMAT may set only its non-zero entries, as the Abaqus manual's
 *     examples do.
 * Point k uses stran + 6k, dstran + 6k, stress + 6k, statev + nstatv k, ddsdde + 36k,
 * temp[k], dtemp[k], coords + 3k, noel[k], npt[k], celent[k], predef + npredf k,
 * dpred + npredf k; props are shared by all points.
 *
 * The Abaqus utility routines a UMAT may call are provided (gfortran linkage names,
 * callable from C as declared below): XIT, STDB_ABQERR, ROTSIG, SINV, SPRINC, SPRIND.
 */
#ifndef DDROM_UMAT_H
#define DDROM_UMAT_H

#include <stddef.h>

/* 2: context arguments (time, coordinates, element and point numbers, step and
 *    increment, predefined fields, characteristic length), XIT/STDB_ABQERR messages. */
#define DDROM_UMAT_ABI_VERSION 2

/* Status returned by ddrom_umat_batch */
#define DDROM_UMAT_OK 0
#define DDROM_UMAT_EBADARG (-1)
/* the UMAT called XIT (or STDB_ABQERR with LOP = -3) at point *info: the batch stopped there */
#define DDROM_UMAT_EXIT (-2)
/* the UMAT reported errors with STDB_ABQERR (LOP = -2); every point was computed */
#define DDROM_UMAT_ERROR (-3)

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
 * ddsdde        : n*36, out: consistent tangent (column-major per point; zeroed before each call)
 * props, nprops : material properties (shared)
 * temp, dtemp   : n, temperature at the start and its increment
 * predef, dpred : n*npredf, predefined field variables at the start and their increments
 *                 (npredf = 0: NULL allowed, the UMAT sees one zero)
 * time          : 2, TIME(1) step time and TIME(2) total time at the start of the increment
 * dtime         : time increment
 * coords        : n*3, coordinates of the points (NULL: zeros)
 * noel, npt     : n, element number and integration point number passed as NOEL and NPT
 *                 (NULL: k + 1 and 1)
 * celent        : n, characteristic element length (NULL: 1)
 * kstep, kinc   : step and increment numbers
 * cmname        : material name, NUL-terminated (passed blank-padded to 80 characters); may be NULL
 * pnewdt        : out, the smallest PNEWDT the UMAT returned (it is set to 1e36 before each call, as
 *                 Abaqus sets "a large value")
 * info          : out, DDROM_UMAT_OK / DDROM_UMAT_ERROR: the number of points with PNEWDT < 1;
 *                 DDROM_UMAT_EXIT: the index of the point at which XIT was called
 * Returns DDROM_UMAT_OK, DDROM_UMAT_EBADARG (n < 0, nstatv < 0, nprops < 0, npredf < 0, a NULL array),
 * DDROM_UMAT_EXIT or DDROM_UMAT_ERROR (messages: ddrom_umat_messages).
 */
int ddrom_umat_batch(int n, const double *stran, const double *dstran, double *stress, double *statev,
                     int nstatv, double *ddsdde, const double *props, int nprops, const double *temp,
                     const double *dtemp, const double *predef, const double *dpred, int npredf,
                     const double *time, double dtime, const double *coords, const int *noel, const int *npt,
                     const double *celent, int kstep, int kinc, const char *cmname, double *pnewdt, int *info);

/* The messages of the last batch (STDB_ABQERR and XIT), one per line, each starting with
 * "info: ", "warning: " or "error: "; copies at most size - 1 bytes and a NUL into buf
 * (buf may be NULL with size 0). Returns the full length. Messages beyond 16 KiB per batch
 * are counted, not kept. */
int ddrom_umat_messages(char *buf, int size);

/* Abaqus utility routines (Fortran linkage, all arguments by reference). */
/* XIT: stop the analysis. Inside ddrom_umat_batch the batch returns DDROM_UMAT_EXIT at once
 * (setjmp/longjmp: the UMAT's frames are abandoned, as Abaqus abandons the job); ddrom raises
 * an error on every MPI rank. Outside a batch it only records a message (it never exits). */
void xit_(void);
/* STDB_ABQERR(LOP, STRING, INTV, REALV, CHARV): a message; %I, %R, %S in STRING take the next
 * INTV, REALV and CHARV (CHARACTER*8) entries. LOP = 1 information, -1 warning, -2 error (the
 * batch completes, then fails), -3 error that stops at once (as XIT). */
void stdb_abqerr_(const int *lop, const char *string, const int *intv, const double *realv, const char *charv,
                  size_t string_len, size_t charv_len);
/* ROTSIG(S, R, SPRIME, LSTR, NDI, NSHR): SPRIME = R S R^T for a tensor stored as NDI direct and
 * NSHR shear components (Abaqus order); LSTR = 1 stress (tensor shears), 2 strain (engineering shears). */
void rotsig_(const double *s, const double *r, double *sprime, const int *lstr, const int *ndi, const int *nshr);
/* SINV(STRESS, SINV1, SINV2, NDI, NSHR): SINV1 = trace / 3, SINV2 = Mises equivalent sqrt(3/2 s:s). */
void sinv_(const double *stress, double *sinv1, double *sinv2, const int *ndi, const int *nshr);
/* SPRINC(S, PS, LSTR, NDI, NSHR): the 3 principal values PS (ascending). */
void sprinc_(const double *s, double *ps, const int *lstr, const int *ndi, const int *nshr);
/* SPRIND(S, PS, AN, LSTR, NDI, NSHR): principal values PS (ascending) and directions AN(3, 3),
 * AN(K, 1..3) the unit direction of PS(K) (column-major: AN(K, I) at K - 1 + 3 (I - 1)). */
void sprind_(const double *s, double *ps, double *an, const int *lstr, const int *ndi, const int *nshr);

#ifdef __cplusplus
}
#endif

#endif
