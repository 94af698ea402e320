"""Layer 7: the reduced-order model — offline operators, ROM file, online reduced solver."""
