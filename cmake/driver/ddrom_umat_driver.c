/* Batch driver of ddrom UMAT plugins: one foreign call from Python integrates a whole
 * block of points; the per-point loop runs here in compiled code. See ddrom_umat.h. */
#include <string.h>

#include "ddrom_umat.h"

int ddrom_umat_abi_version(void) { return DDROM_UMAT_ABI_VERSION; }

int ddrom_umat_batch(int n, const double *stran, const double *dstran, double *stress, double *statev,
                     int nstatv, double *ddsdde, const double *props, int nprops, const double *temp,
                     const double *dtemp, double time0, double dtime, const char *cmname, int *info)
{
    if (info) *info = 0;
    if (n < 0 || nstatv < 0 || nprops < 0 || !info) return DDROM_UMAT_EBADARG;
    if (n > 0 && (!stran || !dstran || !stress || !ddsdde || !temp || !dtemp)) return DDROM_UMAT_EBADARG;
    if ((n > 0 && nstatv > 0 && !statev) || (nprops > 0 && !props)) return DDROM_UMAT_EBADARG;

    /* Abaqus passes CHARACTER*80 CMNAME, blank padded (no NUL) */
    char name[80];
    memset(name, ' ', sizeof name);
    if (cmname) {
        size_t len = strlen(cmname);
        memcpy(name, cmname, len < sizeof name ? len : sizeof name);
    }
    const int ndi = 3, nshr = 3, ntens = 6, layer = 1, kspt = 1, kstep = 1, kinc = 1, npt = 1;
    const double time[2] = {time0, time0};
    /* Small strain: no rotation, no deformation gradient, no predefined fields, no
     * coordinates (documented in cmake/README.md). */
    const double drot[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    const double dfgrd[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    const double coords[3] = {0, 0, 0};
    const double predef[1] = {0}, dpred[1] = {0};
    const double celent = 1.0;
    double dummy_statev[1] = {0};
    double dummy_props[1] = {0};

    for (int k = 0; k < n; ++k) {
        double sse = 0, spd = 0, scd = 0, rpl = 0, drpldt = 0, pnewdt = 1.0;
        double ddsddt[6] = {0}, drplde[6] = {0};
        const int noel = k + 1;
        umat_(stress + 6 * (size_t)k, nstatv ? statev + (size_t)nstatv * k : dummy_statev,
              ddsdde + 36 * (size_t)k, &sse, &spd, &scd, &rpl, ddsddt, drplde, &drpldt,
              stran + 6 * (size_t)k, dstran + 6 * (size_t)k, time, &dtime, temp + k, dtemp + k,
              predef, dpred, name, &ndi, &nshr, &ntens, &nstatv, nprops ? props : dummy_props, &nprops,
              coords, drot, &pnewdt, &celent, dfgrd, dfgrd, &noel, &npt, &layer, &kspt, &kstep, &kinc,
              (size_t)80);
        if (pnewdt < 1.0) ++*info;
    }
    return DDROM_UMAT_OK;
}
