"""What is measured: attacks (training PGD, advertorch evaluation PGD, AutoAttack), SA/RA and gaps, FLOPs."""
