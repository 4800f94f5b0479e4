"""Thin adapters of cut_plugin / pam_plugin to Torch-Pruning and NNI.

Import the submodule you need (``adapters.torch_pruning``, ``adapters.nni``,
``adapters.registry``); this package imports no framework by itself.
"""
