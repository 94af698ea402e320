C     Isotropic linear elasticity as an Abaqus UMAT (fixed-form Fortran).
C     PROPS = [E, NU]; NSTATV = 0.
      SUBROUTINE UMAT(STRESS,STATEV,DDSDDE,SSE,SPD,SCD,
     1 RPL,DDSDDT,DRPLDE,DRPLDT,
     2 STRAN,DSTRAN,TIME,DTIME,TEMP,DTEMP,PREDEF,DPRED,CMNAME,
     3 NDI,NSHR,NTENS,NSTATV,PROPS,NPROPS,COORDS,DROT,PNEWDT,
     4 CELENT,DFGRD0,DFGRD1,NOEL,NPT,LAYER,KSPT,KSTEP,KINC)
C
      INCLUDE 'ABA_PARAM.INC'
C
      CHARACTER*80 CMNAME
      DIMENSION STRESS(NTENS),STATEV(*),
     1 DDSDDE(NTENS,NTENS),DDSDDT(NTENS),DRPLDE(NTENS),
     2 STRAN(NTENS),DSTRAN(NTENS),TIME(2),PREDEF(1),DPRED(1),
     3 PROPS(NPROPS),COORDS(3),DROT(3,3),DFGRD0(3,3),DFGRD1(3,3)
C
      E = PROPS(1)
      ANU = PROPS(2)
      G = E / (2.0D0 * (1.0D0 + ANU))
      ALAM = E * ANU / ((1.0D0 + ANU) * (1.0D0 - 2.0D0 * ANU))
      DO I = 1, NTENS
        DO J = 1, NTENS
          DDSDDE(I,J) = 0.0D0
        END DO
      END DO
      DO I = 1, NDI
        DO J = 1, NDI
          DDSDDE(I,J) = ALAM
        END DO
        DDSDDE(I,I) = ALAM + 2.0D0 * G
      END DO
C     engineering shear strains: shear stiffness G
      DO I = NDI + 1, NTENS
        DDSDDE(I,I) = G
      END DO
      DO I = 1, NTENS
        DO J = 1, NTENS
          STRESS(I) = STRESS(I) + DDSDDE(I,J) * DSTRAN(J)
        END DO
      END DO
      RETURN
      END
