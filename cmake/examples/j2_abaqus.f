C     Isotropic J2 plasticity with linear isotropic hardening, written to
C     the conventions of the Abaqus manual's UMAT examples, so that it
C     runs unmodified in Abaqus, in CalculiX and behind ddrom's driver:
C       - INCLUDE 'ABA_PARAM.INC' (implicit double precision);
C       - DDSDDE: only its non-zero entries are set (the caller zeroes it);
C       - any NDI/NSHR (3D, plane strain, axisymmetric);
C       - elastic and plastic strains in STATEV, rotated with ROTSIG;
C       - the trial Mises stress from SINV;
C       - invalid properties or state size: a message with STDB_ABQERR,
C         then CALL XIT (the analysis stops).
C
C     PROPS  = [E, NU, SYIELD0, HARD]    yield stress SYIELD0 + HARD * EQPLAS
C     STATEV = [EELAS(NTENS), EPLAS(NTENS), EQPLAS]: NSTATV >= 2*NTENS+1
C              (engineering shear strains, Abaqus component order)
C
C     Radial return at the trial stress STRESS + C DSTRAN; with
C     FLOW = S / SMISES (S the trial deviator) the plastic strain
C     increment is 3/2 FLOW DEQPL, DEQPL = (SMISES - SYIELD)/(3G + HARD),
C     and the consistent tangent is
C       DDSDDE = 2 EFFG P_dev + BULK I(x)I + EFFHRD FLOW (x) FLOW,
C       EFFG = G SYIELD / SMISES, EFFHRD = 3G HARD/(3G+HARD) - 3 EFFG.
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
C
      DIMENSION EELAS(6),EPLAS(6),FLOW(6),INTV(2),REALV(2)
      CHARACTER*8 CHARV(1)
      PARAMETER(ZERO=0.D0,ONE=1.D0,TWO=2.D0,THREE=3.D0,SIX=6.D0,
     1 ENUMAX=.4999D0,TOLER=1.0D-13)
C
C     ---- properties and state size
      EMOD=PROPS(1)
      ENU=PROPS(2)
      SYIEL0=PROPS(3)
      HARD=PROPS(4)
      IF (NPROPS.LT.4 .OR. EMOD.LE.ZERO .OR. ENU.LE.-ONE .OR.
     1    ENU.GT.ENUMAX .OR. SYIEL0.LE.ZERO) THEN
        INTV(1)=NOEL
        INTV(2)=NPT
        REALV(1)=EMOD
        REALV(2)=ENU
        CALL STDB_ABQERR(-1,'UMAT J2: invalid properties E = %R, '//
     1   'NU = %R at element %I, point %I',INTV,REALV,CHARV)
        CALL XIT
      END IF
      IF (NSTATV.LT.2*NTENS+1) THEN
        INTV(1)=NSTATV
        INTV(2)=2*NTENS+1
        CALL STDB_ABQERR(-1,'UMAT J2: NSTATV = %I, needs %I',
     1   INTV,REALV,CHARV)
        CALL XIT
      END IF
      EBULK3=EMOD/(ONE-TWO*ENU)
      EG2=EMOD/(ONE+ENU)
      EG=EG2/TWO
      EG3=THREE*EG
      ELAM=(EBULK3-EG2)/THREE
C
C     ---- elastic stiffness (non-zero entries only)
      DO K1=1,NDI
        DO K2=1,NDI
          DDSDDE(K2,K1)=ELAM
        END DO
        DDSDDE(K1,K1)=EG2+ELAM
      END DO
      DO K1=NDI+1,NTENS
        DDSDDE(K1,K1)=EG
      END DO
C
C     ---- strains at the start of the increment, rotated (DROT)
      CALL ROTSIG(STATEV(1),DROT,EELAS,2,NDI,NSHR)
      CALL ROTSIG(STATEV(NTENS+1),DROT,EPLAS,2,NDI,NSHR)
      EQPLAS=STATEV(1+2*NTENS)
C
C     ---- elastic predictor
      DO K1=1,NTENS
        DO K2=1,NTENS
          STRESS(K2)=STRESS(K2)+DDSDDE(K2,K1)*DSTRAN(K1)
        END DO
        EELAS(K1)=EELAS(K1)+DSTRAN(K1)
      END DO
C
C     ---- yield check at the trial Mises stress
      CALL SINV(STRESS,SHYDRO,SMISES,NDI,NSHR)
      SYIELD=SYIEL0+HARD*EQPLAS
      IF (SMISES-SYIELD .GT. TOLER*(SMISES+SYIELD)) THEN
        DO K1=1,NDI
          FLOW(K1)=(STRESS(K1)-SHYDRO)/SMISES
        END DO
        DO K1=NDI+1,NTENS
          FLOW(K1)=STRESS(K1)/SMISES
        END DO
        DEQPL=(SMISES-SYIELD)/(EG3+HARD)
        SYIELD=SYIELD+HARD*DEQPL
C       stress on the updated yield surface, strains
        DO K1=1,NDI
          STRESS(K1)=FLOW(K1)*SYIELD+SHYDRO
          EPLAS(K1)=EPLAS(K1)+THREE/TWO*FLOW(K1)*DEQPL
          EELAS(K1)=EELAS(K1)-THREE/TWO*FLOW(K1)*DEQPL
        END DO
        DO K1=NDI+1,NTENS
          STRESS(K1)=FLOW(K1)*SYIELD
          EPLAS(K1)=EPLAS(K1)+THREE*FLOW(K1)*DEQPL
          EELAS(K1)=EELAS(K1)-THREE*FLOW(K1)*DEQPL
        END DO
        EQPLAS=EQPLAS+DEQPL
C       consistent tangent
        EFFG=EG*SYIELD/SMISES
        EFFG2=TWO*EFFG
        EFFG3=THREE/TWO*EFFG2
        EFFLAM=(EBULK3-EFFG2)/THREE
        EFFHRD=EG3*HARD/(EG3+HARD)-EFFG3
        DO K1=1,NDI
          DO K2=1,NDI
            DDSDDE(K2,K1)=EFFLAM
          END DO
          DDSDDE(K1,K1)=EFFG2+EFFLAM
        END DO
        DO K1=NDI+1,NTENS
          DDSDDE(K1,K1)=EFFG
        END DO
        DO K1=1,NTENS
          DO K2=1,NTENS
            DDSDDE(K2,K1)=DDSDDE(K2,K1)+EFFHRD*FLOW(K2)*FLOW(K1)
          END DO
        END DO
      END IF
C
C     ---- state variables
      DO K1=1,NTENS
        STATEV(K1)=EELAS(K1)
        STATEV(K1+NTENS)=EPLAS(K1)
      END DO
      STATEV(1+2*NTENS)=EQPLAS
      RETURN
      END
