"""What is measured: attacks (training PGD, advertorch evaluation PGD, evaluation-attack configs, AutoAttack),
SA/RA, gaps and an evaluate stage's metric keys (evaluation), FLOPs and their stage.json record (flops)."""
