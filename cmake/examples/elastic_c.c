/* Isotropic linear elasticity as an Abaqus UMAT written in C.
 * PROPS = [E, nu]; NSTATV = 0. DDSDDE is column-major: (i, j) at ddsdde[i + 6 j]. */
#include <stddef.h>

void umat_(double *stress, double *statev, double *ddsdde, double *sse, double *spd, double *scd,
           double *rpl, double *ddsddt, double *drplde, double *drpldt, const double *stran,
           const double *dstran, const double *time, const double *dtime, const double *temp,
           const double *dtemp, const double *predef, const double *dpred, const char *cmname,
           const int *ndi, const int *nshr, const int *ntens, const int *nstatv, const double *props,
           const int *nprops, const double *coords, const double *drot, double *pnewdt,
           const double *celent, const double *dfgrd0, const double *dfgrd1, const int *noel,
           const int *npt, const int *layer, const int *kspt, const int *kstep, const int *kinc,
           size_t cmname_len)
{
    const double E = props[0], nu = props[1];
    const double G = E / (2.0 * (1.0 + nu));
    const double lam = E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu));
    for (int k = 0; k < 36; ++k) ddsdde[k] = 0.0;
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) ddsdde[i + 6 * j] = lam;
        ddsdde[i + 6 * i] += 2.0 * G;
        ddsdde[(i + 3) + 6 * (i + 3)] = G;     /* engineering shear strains */
    }
    for (int i = 0; i < 6; ++i) {
        double ds = 0.0;
        for (int j = 0; j < 6; ++j) ds += ddsdde[i + 6 * j] * dstran[j];
        stress[i] += ds;
    }
}
