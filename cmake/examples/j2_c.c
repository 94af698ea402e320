/* J2 plasticity with linear isotropic hardening (radial return, consistent tangent) as
 * an Abaqus UMAT written in C.
 *
 * PROPS  = [E, nu, sigma_y, H]      yield: sqrt(3/2 s:s) - (sigma_y + H p) <= 0
 * STATEV = [eps_p (6, Abaqus order, engineering shears), p]: NSTATV = 7, p = STATEV(7).
 *
 * Radial return: s_tr = dev(stress + C dstran), q = sqrt(3/2 s_tr:s_tr),
 * dp = (q - sigma_y - H p) / (3G + H), n = 3/2 s_tr / q, stress = stress_tr - 2G dp n.
 * Consistent tangent: D = C - (6 G^2 dp / q) P_dev + (4 G^2 dp / q - 4 G^2 / (3G + H)) n (x) n.
 * Voigt entries with engineering strains are the tensor components D_ijkl (shear diag of
 * P_dev = 1/2). DDSDDE is column-major: (i, j) at ddsdde[i + 6 j].
 */
#include <math.h>
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
    const double E = props[0], nu = props[1], sy = props[2], H = props[3];
    const double G = E / (2.0 * (1.0 + nu));
    const double lam = E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu));
    double C[36] = {0};
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) C[i + 6 * j] = lam;
        C[i + 6 * i] += 2.0 * G;
        C[(i + 3) + 6 * (i + 3)] = G;
    }
    double sig[6];
    for (int i = 0; i < 6; ++i) {
        double ds = 0.0;
        for (int j = 0; j < 6; ++j) ds += C[i + 6 * j] * dstran[j];
        sig[i] = stress[i] + ds;
    }
    const double m = (sig[0] + sig[1] + sig[2]) / 3.0;
    double s[6] = {sig[0] - m, sig[1] - m, sig[2] - m, sig[3], sig[4], sig[5]};
    const double q = sqrt(1.5 * (s[0] * s[0] + s[1] * s[1] + s[2] * s[2]
                                 + 2.0 * (s[3] * s[3] + s[4] * s[4] + s[5] * s[5])));
    const double p = statev[6];
    const double R = sy + H * p;
    const double f = q - R;
    for (int k = 0; k < 36; ++k) ddsdde[k] = C[k];
    /* round-off on the yield surface stays elastic (same criterion as ddrom's built-in law) */
    if (f > 1e-13 * (q + R)) {
        const double dp = f / (3.0 * G + H);
        double n[6];
        for (int i = 0; i < 6; ++i) n[i] = 1.5 * s[i] / q;
        for (int i = 0; i < 6; ++i) sig[i] -= 2.0 * G * dp * n[i];
        for (int i = 0; i < 3; ++i) {
            statev[i] += dp * n[i];
            statev[i + 3] += 2.0 * dp * n[i + 3];   /* engineering shear */
        }
        statev[6] = p + dp;
        const double a = 6.0 * G * G * dp / q;
        const double b = 4.0 * G * G * dp / q - 4.0 * G * G / (3.0 * G + H);
        for (int i = 0; i < 3; ++i) {
            for (int j = 0; j < 3; ++j) ddsdde[i + 6 * j] += a / 3.0;
            ddsdde[i + 6 * i] -= a;
            ddsdde[(i + 3) + 6 * (i + 3)] -= 0.5 * a;
        }
        for (int i = 0; i < 6; ++i)
            for (int j = 0; j < 6; ++j) ddsdde[i + 6 * j] += b * n[i] * n[j];
    }
    for (int i = 0; i < 6; ++i) stress[i] = sig[i];
}
