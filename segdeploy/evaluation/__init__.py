"""Evaluating artifacts on labelled data sets: mIoU, per-class IoU, pixel accuracy, confusion.

``datasets`` reads Pascal VOC, Cityscapes and plain image/mask folders; ``evaluate`` runs one or
several artifacts over them in lockstep (each image is loaded once, artifacts are compared pixel
by pixel); ``metrics`` holds the confusion matrix, mIoU and pixel accuracy (also used by
``segdeploy.precision``); ``report`` writes the confusion-matrix PNG, overlays and the terminal tables.
"""
