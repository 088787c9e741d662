"""
@article{Chung2020,
  title = {Cryo-RALib -- a modular library for accelerating alignment in cryo-EM},
  author = {Chung, Szu-Chi and Hung, Cheng-Yu and Siao, Huei-Lun and Wu, Hung-Yi and Chang, Wei-Hau and Tu, I-Ping},
  journal = {arXiv preprint},
  volume = {2011.05755},
  year = {2020},
  doi = {10.48550/arXiv.2011.05755},
  url = {https://arxiv.org/abs/2011.05755}
}

@article{Hohn2007,
  title = {SPARX, a new environment for Cryo-EM image processing},
  author = {Hohn, Michael and Tang, Grant and Goodyear, Grant and Baldwin, P. R. and Huang, Zhong and Penczek, Pawel A. and Yang, Chao and Glaeser, Robert M. and Adams, Paul D. and Ludtke, Steven J.},
  journal = {Journal of Structural Biology},
  volume = {157},
  number = {1},
  pages = {47--55},
  year = {2007},
  doi = {10.1016/j.jsb.2006.07.003}
}

@article{Tang2007,
  title = {EMAN2: an extensible image processing suite for electron microscopy},
  author = {Tang, Guang and Peng, Liwei and Baldwin, Philip R. and Mann, Deepinder S. and Jiang, Wen and Rees, Ian and Ludtke, Steven J.},
  journal = {Journal of Structural Biology},
  volume = {157},
  number = {1},
  pages = {38--46},
  year = {2007},
  doi = {10.1016/j.jsb.2006.05.009}
}

@article{Penczek1992,
  title = {Three-dimensional reconstruction of single particles embedded in ice},
  author = {Penczek, Pawel and Radermacher, Michael and Frank, Joachim},
  journal = {Ultramicroscopy},
  volume = {40},
  number = {1},
  pages = {33--53},
  year = {1992},
  doi = {10.1016/0304-3991(92)90233-A}
}

@article{vanHeel1985,
  title = {Characteristic views of E. coli and B. stearothermophilus 30S ribosomal subunits in the electron microscope},
  author = {van Heel, Marin and St{\"o}ffler-Meilicke, Marina},
  journal = {The EMBO Journal},
  volume = {4},
  number = {9},
  pages = {2389--2395},
  year = {1985},
  doi = {10.1002/j.1460-2075.1985.tb03944.x}
}

@article{Yang2012,
  title = {Iterative stable alignment and clustering of 2D transmission electron microscope images},
  author = {Yang, Zhengfan and Fang, Jia and Chittuluru, Johnathan and Asturias, Francisco J. and Penczek, Pawel A.},
  journal = {Structure},
  volume = {20},
  number = {2},
  pages = {237--247},
  year = {2012},
  doi = {10.1016/j.str.2011.12.007}
}
"""
