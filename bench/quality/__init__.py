"""Action quality: the yardstick (`python -m bench.quality`), its inverse-dynamics ceilings
(`idm`), rendered real play (`realplay`) and the analyses of trained runs (`id_schemes`,
`score_ranking`)."""
