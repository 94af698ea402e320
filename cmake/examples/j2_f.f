C     J2 plasticity with linear isotropic hardening (radial return,
C     consistent tangent) as an Abaqus UMAT (fixed-form Fortran).
C     PROPS  = [E, NU, SIGMA_Y, H]
C     STATEV = [EPS_P (6, Abaqus order, engineering shears), P]: NSTATV = 7
C     Same algorithm as j2_c.c:
C       D = C - (6 G^2 DP / Q) P_DEV + (4 G^2 DP / Q - 4 G^2 / (3G + H)) N (x) N
      SUBROUTINE UMAT(STRESS,STATEV,DDSDDE,SSE,SPD,SCD,
     1 RPL,DDSDDT,DRPLDE,DRPLDT,
     2 STRAN,DSTRAN,TIME,DTIME,TEMP,DTEMP,PREDEF,DPRED,CMNAME,
     3 NDI,NSHR,NTENS,NSTATV,PROPS,NPROPS,COORDS,DROT,PNEWDT,
     4 CELENT,DFGRD0,DFGRD1,NOEL,NPT,LAYER,KSPT,KSTEP,KINC)
C
      INCLUDE 'ABA_PARAM.INC'
C
      CHARACTER*80 CMNAME
      DIMENSION STRESS(NTENS),STATEV(NSTATV),
     1 DDSDDE(NTENS,NTENS),DDSDDT(NTENS),DRPLDE(NTENS),
     2 STRAN(NTENS),DSTRAN(NTENS),TIME(2),PREDEF(1),DPRED(1),
     3 PROPS(NPROPS),COORDS(3),DROT(3,3),DFGRD0(3,3),DFGRD1(3,3)
      DIMENSION SIG(6),S(6),ANRM(6)
C
      E = PROPS(1)
      ANU = PROPS(2)
      SY = PROPS(3)
      H = PROPS(4)
      G = E / (2.0D0 * (1.0D0 + ANU))
      ALAM = E * ANU / ((1.0D0 + ANU) * (1.0D0 - 2.0D0 * ANU))
      DO I = 1, 6
        DO J = 1, 6
          DDSDDE(I,J) = 0.0D0
        END DO
      END DO
      DO I = 1, 3
        DO J = 1, 3
          DDSDDE(I,J) = ALAM
        END DO
        DDSDDE(I,I) = ALAM + 2.0D0 * G
        DDSDDE(I+3,I+3) = G
      END DO
C     elastic trial
      DO I = 1, 6
        DS = 0.0D0
        DO J = 1, 6
          DS = DS + DDSDDE(I,J) * DSTRAN(J)
        END DO
        SIG(I) = STRESS(I) + DS
      END DO
      SM = (SIG(1) + SIG(2) + SIG(3)) / 3.0D0
      DO I = 1, 3
        S(I) = SIG(I) - SM
        S(I+3) = SIG(I+3)
      END DO
      Q = SQRT(1.5D0 * (S(1)**2 + S(2)**2 + S(3)**2
     1     + 2.0D0 * (S(4)**2 + S(5)**2 + S(6)**2)))
      P = STATEV(7)
      R = SY + H * P
      F = Q - R
C     round-off on the yield surface stays elastic (as ddrom's built-in law)
      IF (F .GT. 1.0D-13 * (Q + R)) THEN
        DP = F / (3.0D0 * G + H)
        DO I = 1, 6
          ANRM(I) = 1.5D0 * S(I) / Q
          SIG(I) = SIG(I) - 2.0D0 * G * DP * ANRM(I)
        END DO
        DO I = 1, 3
          STATEV(I) = STATEV(I) + DP * ANRM(I)
          STATEV(I+3) = STATEV(I+3) + 2.0D0 * DP * ANRM(I+3)
        END DO
        STATEV(7) = P + DP
        A = 6.0D0 * G * G * DP / Q
        B = 4.0D0 * G * G * DP / Q - 4.0D0 * G * G / (3.0D0 * G + H)
        DO I = 1, 3
          DO J = 1, 3
            DDSDDE(I,J) = DDSDDE(I,J) + A / 3.0D0
          END DO
          DDSDDE(I,I) = DDSDDE(I,I) - A
          DDSDDE(I+3,I+3) = DDSDDE(I+3,I+3) - 0.5D0 * A
        END DO
        DO J = 1, 6
          DO I = 1, 6
            DDSDDE(I,J) = DDSDDE(I,J) + B * ANRM(I) * ANRM(J)
          END DO
        END DO
      END IF
      DO I = 1, 6
        STRESS(I) = SIG(I)
      END DO
      RETURN
      END
