#!/usr/bin/env python3
"""Synthetic catalogue for the README screenshot: no real product photos.

    catalog.py generate OUTDIR        draw the product images (300x400 JPEGs),
                                      OUTDIR/catalog.json and OUTDIR/query.jpg
    catalog.py import OUTDIR URL      POST every product to URL/v1/products

Every image is drawn here with Pillow (polygons and ellipses on white), so
the screenshot made from them copies nobody's photos. Deterministic: the
same seed draws the same catalogue.
"""

import base64
import json
import math
import os
import random
import re
import sys
import urllib.error
import urllib.request

from PIL import Image, ImageDraw, ImageFilter

W, H = 300, 400
S = 3  # drawn at 3x, then downscaled: smooth edges

COLOURS = {
    "Navy Blue": (38, 52, 96),
    "Blue": (52, 110, 190),
    "Red": (196, 48, 52),
    "Green": (58, 132, 84),
    "Black": (40, 40, 44),
    "White": (244, 244, 240),
    "Grey": (140, 142, 146),
    "Beige": (222, 204, 170),
    "Pink": (232, 150, 172),
    "Yellow": (238, 196, 64),
    "Maroon": (120, 36, 52),
    "Olive": (112, 116, 60),
    "Brown": (118, 78, 52),
    "Tan": (196, 150, 104),
    "Purple": (112, 72, 150),
    "Teal": (36, 128, 132),
    "Orange": (232, 122, 48),
    "Silver": (190, 194, 200),
}


def shade(rgb, f):
    """f < 1 darkens, f > 1 lightens towards white."""
    if f <= 1:
        return tuple(int(c * f) for c in rgb)
    return tuple(int(c + (255 - c) * (f - 1)) for c in rgb)


def outline_of(rgb):
    # Light colours get a grey edge so they stand off the white background.
    return (150, 150, 150) if sum(rgb) > 600 else shade(rgb, 0.62)


def sc(points):
    return [(x * S, y * S) for x, y in points]


def box(x0, y0, x1, y1):
    return [x0 * S, y0 * S, x1 * S, y1 * S]


class Canvas:
    def __init__(self):
        self.img = Image.new("RGB", (W * S, H * S), (255, 255, 255))
        self.d = ImageDraw.Draw(self.img)

    def shadow(self, cx, cy, rx, ry):
        layer = Image.new("L", self.img.size, 0)
        ImageDraw.Draw(layer).ellipse(box(cx - rx, cy - ry, cx + rx, cy + ry), fill=70)
        layer = layer.filter(ImageFilter.GaussianBlur(8 * S))
        grey = Image.new("RGB", self.img.size, (120, 120, 120))
        self.img.paste(grey, (0, 0), layer)

    def poly(self, pts, fill, line=None, width=2):
        self.d.polygon(sc(pts), fill=fill, outline=line, width=width * S if line else 0)

    def ellipse(self, b, fill, line=None, width=2):
        self.d.ellipse(box(*b), fill=fill, outline=line, width=width * S if line else 0)

    def rrect(self, b, r, fill, line=None, width=2):
        self.d.rounded_rectangle(box(*b), radius=r * S, fill=fill, outline=line,
                                 width=width * S if line else 0)

    def line(self, pts, fill, width=2):
        self.d.line(sc(pts), fill=fill, width=width * S, joint="curve")

    def arc(self, b, start, end, fill, width=2):
        self.d.arc(box(*b), start, end, fill=fill, width=width * S)

    def done(self):
        return self.img.resize((W, H), Image.LANCZOS)


# ------------------------------------------------------------- garments

def tshirt(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(150, 352, 95, 10)
    sl = rnd.uniform(0, 8)  # sleeve length
    body = [(104, 92), (128, 82), (172, 82), (196, 92), (246, 134 + sl), (226, 170 + sl),
            (206, 158), (206, 340), (94, 340), (94, 158), (74, 170 + sl), (54, 134 + sl)]
    c.poly(body, rgb, ol)
    # sleeve folds
    c.line([(94, 158), (100, 128)], shade(rgb, 0.85), 2)
    c.line([(206, 158), (200, 128)], shade(rgb, 0.85), 2)
    if style == "Striped":
        stripe = (250, 250, 250) if sum(rgb) < 600 else (60, 80, 140)
        for y in range(176, 330, 26):
            c.poly([(95, y), (205, y), (205, y + 9), (95, y + 9)], stripe)
    elif style == "Graphic":
        acc = (250, 250, 250) if sum(rgb) < 600 else (200, 60, 60)
        c.ellipse((124, 150, 176, 202), None, acc, 4)
        c.poly([(138, 186), (150, 162), (162, 186)], acc)
    if style == "V-neck":
        c.poly([(128, 82), (150, 122), (172, 82)], (255, 255, 255), ol)
        c.line([(131, 84), (150, 118), (169, 84)], shade(rgb, 0.8), 3)
    else:
        c.d.chord(box(126, 66, 174, 100), 0, 180, fill=(255, 255, 255), outline=ol, width=2 * S)
        c.arc((124, 64, 176, 104), 0, 180, shade(rgb, 0.8), 4)
    c.poly(body, None, ol)


def sweatshirt(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(150, 356, 100, 10)
    body = [(104, 88), (128, 80), (172, 80), (196, 88), (232, 130), (256, 320), (230, 328),
            (206, 176), (206, 330), (94, 330), (94, 176), (70, 328), (44, 320), (68, 130)]
    c.poly(body, rgb, ol)
    dark = shade(rgb, 0.82)
    c.rrect((94, 322, 206, 346), 4, dark, ol)
    c.rrect((40, 314, 72, 336), 4, dark, ol)
    c.rrect((228, 314, 260, 336), 4, dark, ol)
    if style == "Hooded":
        c.poly([(118, 84), (150, 40), (182, 84), (150, 110)], dark, ol)
        c.ellipse((132, 60, 168, 100), shade(rgb, 0.55))
        c.line([(142, 106), (140, 150)], (235, 235, 235), 2)
        c.line([(158, 106), (160, 150)], (235, 235, 235), 2)
        c.rrect((114, 230, 186, 290), 8, shade(rgb, 0.9), dark)
    else:
        c.d.chord(box(124, 64, 176, 104), 0, 180, fill=(255, 255, 255), outline=ol, width=2 * S)
        c.arc((122, 62, 178, 110), 0, 180, dark, 6)


def shirt(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(150, 356, 96, 10)
    body = [(106, 88), (130, 78), (170, 78), (194, 88), (232, 140), (252, 318), (226, 324),
            (206, 180), (208, 338), (92, 338), (94, 180), (74, 324), (48, 318), (68, 140)]
    c.poly(body, rgb, ol)
    if style == "Checked":
        line = shade(rgb, 0.7) if sum(rgb) > 300 else shade(rgb, 1.5)
        for x in range(100, 206, 18):
            c.line([(x, 120), (x, 334)], line, 2)
        for y in range(120, 334, 18):
            c.line([(96, y), (204, y)], line, 2)
        c.poly(body, None, ol)
    c.line([(150, 96), (150, 338)], shade(rgb, 0.75), 2)
    for y in range(120, 330, 34):
        c.ellipse((146, y - 4, 154, y + 4), (236, 236, 230), shade(rgb, 0.6), 1)
    # collar
    c.poly([(130, 78), (150, 104), (138, 118), (118, 90)], shade(rgb, 0.93), ol)
    c.poly([(170, 78), (150, 104), (162, 118), (182, 90)], shade(rgb, 0.93), ol)
    c.rrect((48, 306, 76, 326), 3, shade(rgb, 0.88), ol)
    c.rrect((224, 306, 252, 326), 3, shade(rgb, 0.88), ol)
    c.rrect((172, 140, 196, 166), 2, None, shade(rgb, 0.75))


def trousers(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(150, 372, 80, 8)
    legs = [(100, 60), (200, 60), (208, 140), (214, 364), (164, 364), (152, 150), (148, 150),
            (136, 364), (86, 364), (92, 140)]
    c.poly(legs, rgb, ol)
    c.rrect((98, 52, 202, 72), 3, shade(rgb, 0.85), ol)
    for x in (112, 140, 160, 188):
        c.rrect((x - 3, 52, x + 3, 74), 1, shade(rgb, 0.7))
    c.line([(150, 72), (150, 140)], shade(rgb, 0.7), 2)
    c.arc((150, 76, 190, 110), 180, 270, shade(rgb, 0.7), 2)
    c.arc((110, 76, 150, 110), 270, 360, shade(rgb, 0.7), 2)
    if style == "Slim Jeans":
        stitch = (226, 170, 90)
        c.line([(101, 78), (130, 78), (134, 96)], stitch, 1)
        c.line([(199, 78), (170, 78), (166, 96)], stitch, 1)
        c.line([(118, 180), (112, 360)], shade(rgb, 1.15), 2)
        c.line([(182, 180), (188, 360)], shade(rgb, 1.15), 2)
    else:
        c.line([(112, 90), (111, 362)], shade(rgb, 0.82), 2)
        c.line([(188, 90), (189, 362)], shade(rgb, 0.82), 2)
    c.poly(legs, None, ol)


def shorts(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(150, 300, 90, 8)
    legs = [(92, 120), (208, 120), (224, 280), (160, 286), (150, 196), (140, 286), (76, 280)]
    c.poly(legs, rgb, ol)
    c.rrect((90, 108, 210, 132), 4, shade(rgb, 0.85), ol)
    if style == "Drawstring":
        c.line([(146, 130), (138, 170)], (245, 245, 245), 2)
        c.line([(154, 130), (162, 170)], (245, 245, 245), 2)
    c.line([(150, 132), (150, 190)], shade(rgb, 0.72), 2)
    c.line([(80, 262), (140, 268)], shade(rgb, 0.8), 2)
    c.line([(160, 268), (220, 262)], shade(rgb, 0.8), 2)


def dress(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(150, 366, 100, 10)
    flare = rnd.uniform(0, 14)
    body = [(118, 70), (130, 70), (150, 96), (170, 70), (182, 70), (186, 130), (176, 180),
            (236 + flare, 350), (64 - flare, 350), (124, 180), (114, 130)]
    c.poly(body, rgb, ol)
    c.line([(118, 70), (124, 40)], ol, 3)
    c.line([(182, 70), (176, 40)], ol, 3)
    c.rrect((122, 172, 178, 186), 3, shade(rgb, 0.8))
    if style == "Floral":
        rr = random.Random(7)
        for _ in range(22):
            x, y = rr.uniform(100, 200), rr.uniform(200, 335)
            petal = (250, 250, 250) if sum(rgb) < 450 else (250, 220, 90)
            for dx, dy in ((-4, 0), (4, 0), (0, -4), (0, 4)):
                c.ellipse((x + dx - 3, y + dy - 3, x + dx + 3, y + dy + 3), petal)
            c.ellipse((x - 2, y - 2, x + 2, y + 2), (220, 120, 40))
    for x0, x1 in ((150, 150), (132, 118), (168, 182)):
        c.line([(x0, 190), (x1, 344)], shade(rgb, 0.85), 2)
    c.poly(body, None, ol)


# -------------------------------------------------------------- footwear

def sneaker(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(150, 282, 118, 10)
    sole_col = (248, 248, 246) if style != "High-top" else (236, 228, 210)
    top = 130 if style == "High-top" else 168
    upper = [(52, 250), (54, 214), (80, top), (126, top - 6), (142, 196), (200, 206),
             (248, 228), (256, 250)]
    c.poly(upper, rgb, ol)
    c.rrect((42, 244, 262, 272), 12, sole_col, (170, 170, 170))
    c.line([(48, 258), (256, 258)], (200, 200, 200), 2)
    c.poly([(200, 206), (248, 228), (256, 248), (214, 248)], shade(rgb, 0.85), ol)
    for i in range(5):
        x = 126 + i * 14
        c.line([(x, 186 + i * 3), (x + 12, 200 + i * 2)], (245, 245, 245) if sum(rgb) < 600 else (90, 90, 90), 3)
    accent = (250, 250, 250) if sum(rgb) < 600 else (60, 90, 160)
    c.d.arc(box(80, 200, 190, 262), 200, 330, fill=accent, width=5 * S)
    c.ellipse((60, top + 20, 74, top + 34), shade(rgb, 0.75))


def boots(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(150, 330, 110, 10)
    upper = [(78, 80), (160, 80), (164, 232), (238, 262), (248, 300), (70, 300), (72, 200)]
    c.poly(upper, rgb, ol)
    c.rrect((64, 296, 254, 320), 6, shade(rgb, 0.45), ol)
    c.rrect((72, 292, 110, 324), 4, shade(rgb, 0.4))
    c.line([(160, 96), (162, 228)], shade(rgb, 0.75), 2)
    c.rrect((74, 80, 164, 96), 3, shade(rgb, 0.8), ol)
    if style == "Chelsea":
        c.poly([(120, 96), (162, 96), (162, 200), (132, 180)], shade(rgb, 0.6))
    else:
        for y in range(110, 220, 18):
            c.line([(140, y), (164, y + 6)], (230, 220, 200), 3)


def heels(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(160, 292, 100, 8)
    shoe = [(74, 146), (88, 148), (118, 186), (168, 218), (228, 232), (256, 254), (252, 274),
            (200, 280), (150, 262), (112, 228), (100, 226), (98, 290), (88, 290), (82, 226),
            (70, 196)]
    c.poly(shoe, rgb, ol)
    c.poly([(86, 152), (116, 188), (166, 219), (146, 204), (108, 170)], shade(rgb, 0.6))
    c.line([(252, 272), (200, 278), (150, 260), (112, 226)], shade(rgb, 0.55), 3)
    c.rrect((86, 284, 100, 292), 2, shade(rgb, 0.4))
    if style == "Strappy":
        c.line([(76, 160), (104, 150), (118, 156)], shade(rgb, 0.7), 4)
        c.ellipse((112, 150, 122, 160), (212, 178, 92))


# ----------------------------------------------------------- accessories

def handbag(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(150, 330, 110, 10)
    hw = 6
    c.arc((96, 60, 204, 200), 180, 360, shade(rgb, 0.7), hw + 2)
    c.poly([(70, 140), (230, 140), (248, 320), (52, 320)], rgb, ol)
    c.poly([(70, 140), (230, 140), (234, 190), (66, 190)], shade(rgb, 0.88), ol)
    c.rrect((136, 176, 164, 200), 3, (212, 178, 92), (150, 120, 60))
    if style == "Tote":
        c.line([(82, 206), (218, 206)], shade(rgb, 0.8), 2)
    for x, y in ((96, 140), (204, 140)):
        c.ellipse((x - 6, y - 6, x + 6, y + 6), (212, 178, 92), (150, 120, 60), 1)


def backpack(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(150, 350, 100, 10)
    c.arc((120, 40, 180, 100), 180, 360, shade(rgb, 0.6), 6)
    c.rrect((72, 68, 228, 340), 40, rgb, ol)
    c.rrect((96, 200, 204, 320), 22, shade(rgb, 0.86), ol)
    c.line([(108, 216), (192, 216)], shade(rgb, 0.6), 3)
    c.rrect((146, 208, 154, 232), 2, (60, 60, 60))
    c.line([(96, 120), (204, 120)], shade(rgb, 0.75), 2)
    if style == "Rolltop":
        c.rrect((72, 60, 228, 104), 12, shade(rgb, 0.8), ol)
        c.rrect((138, 90, 162, 150), 3, (50, 50, 50))


def watch(c, rgb, rnd, style):
    strap = rgb
    ol = outline_of(strap)
    c.shadow(150, 356, 60, 8)
    c.rrect((122, 40, 178, 150), 8, strap, ol)
    c.rrect((122, 250, 178, 350), 8, strap, ol)
    for y in (280, 300, 320):
        c.ellipse((146, y - 3, 154, y + 3), shade(strap, 0.6))
    case = (200, 202, 208) if style != "Gold" else (214, 182, 96)
    c.ellipse((86, 136, 214, 264), case, (110, 110, 116), 3)
    c.rrect((210, 188, 224, 212), 3, case, (110, 110, 116))
    face = (252, 252, 250) if style != "Chronograph" else (34, 38, 48)
    c.ellipse((98, 148, 202, 252), face, (150, 150, 150), 2)
    tick = (40, 40, 40) if style != "Chronograph" else (230, 230, 230)
    for i in range(12):
        a = i * math.pi / 6
        r0, r1 = (40, 48) if i % 3 else (34, 48)
        c.line([(150 + r0 * math.sin(a), 200 - r0 * math.cos(a)),
                (150 + r1 * math.sin(a), 200 - r1 * math.cos(a))], tick, 2 if i % 3 else 3)
    if style == "Chronograph":
        for cx in (130, 170):
            c.ellipse((cx - 11, 200 - 11, cx + 11, 200 + 11), None, (200, 200, 200), 1)
    c.line([(150, 200), (150, 164)], tick, 4)
    c.line([(150, 200), (176, 214)], tick, 3)
    c.line([(150, 200), (124, 180)], (210, 50, 50), 1)
    c.ellipse((146, 196, 154, 204), tick)


def cap(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(160, 246, 110, 8)
    c.d.chord(box(70, 120, 230, 300), 180, 360, fill=rgb, outline=ol, width=2 * S)
    c.poly([(196, 204), (276, 212), (270, 236), (196, 230)], shade(rgb, 0.8), ol)
    c.rrect((70, 204, 214, 224), 6, shade(rgb, 0.88), ol)
    c.line([(150, 120), (150, 206)], shade(rgb, 0.8), 2)
    c.arc((100, 124, 200, 380), 190, 270, shade(rgb, 0.8), 2)
    c.ellipse((143, 114, 157, 126), shade(rgb, 0.75))
    if style == "Logo":
        acc = (250, 250, 250) if sum(rgb) < 600 else (200, 50, 50)
        c.poly([(118, 184), (134, 150), (150, 184)], acc)
        c.poly([(140, 184), (156, 150), (172, 184)], acc)


def sunglasses(c, rgb, rnd, style):
    ol = outline_of(rgb)
    c.shadow(150, 262, 120, 8)
    lens = (48, 56, 70) if style != "Mirrored" else (110, 150, 190)
    if style == "Round":
        c.ellipse((48, 156, 138, 246), lens, rgb, 6)
        c.ellipse((162, 156, 252, 246), lens, rgb, 6)
    else:
        c.rrect((44, 160, 140, 236), 26, lens, rgb, 6)
        c.rrect((160, 160, 256, 236), 26, lens, rgb, 6)
    c.arc((132, 164, 168, 196), 200, 340, rgb, 6)
    c.line([(44, 176), (22, 170)], rgb, 5)
    c.line([(256, 176), (278, 170)], rgb, 5)
    c.ellipse((66, 176, 92, 192), shade(lens, 1.35))
    c.ellipse((180, 176, 206, 192), shade(lens, 1.35))


# ---------------------------------------------------------------- catalogue

# (articleType, drawer, masterCategory, subCategory, styles, usage, genders, seasons, colours)
TYPES = [
    ("Tshirts", tshirt, "Apparel", "Topwear", ["Crew", "V-neck", "Striped", "Graphic"], "Casual",
     ["Men", "Women", "Unisex"], ["Summer", "Spring"],
     ["Blue", "Red", "White", "Black", "Green", "Yellow", "Navy Blue", "Grey"]),
    ("Sweatshirts", sweatshirt, "Apparel", "Topwear", ["Crewneck", "Hooded"], "Casual",
     ["Men", "Women", "Unisex"], ["Winter", "Fall"],
     ["Grey", "Maroon", "Navy Blue", "Olive", "Pink"]),
    ("Shirts", shirt, "Apparel", "Topwear", ["Oxford", "Checked"], "Formal",
     ["Men"], ["Fall", "Spring"], ["White", "Blue", "Pink", "Teal", "Beige"]),
    ("Trousers", trousers, "Apparel", "Bottomwear", ["Chino", "Slim Jeans"], "Casual",
     ["Men", "Women"], ["Fall", "Winter", "Spring"], ["Beige", "Navy Blue", "Blue", "Black", "Olive", "Grey"]),
    ("Shorts", shorts, "Apparel", "Bottomwear", ["Chino", "Drawstring"], "Sports",
     ["Men", "Women"], ["Summer"], ["Tan", "Navy Blue", "Red", "Grey"]),
    ("Dresses", dress, "Apparel", "Dress", ["Sun", "Floral", "Slip"], "Casual",
     ["Women"], ["Summer", "Spring"], ["Red", "Yellow", "Navy Blue", "Pink", "Green", "Black"]),
    ("Sports Shoes", sneaker, "Footwear", "Shoes", ["Runner", "High-top", "Trainer"], "Sports",
     ["Men", "Women", "Unisex"], ["Summer", "Fall"], ["White", "Black", "Blue", "Red", "Grey", "Orange"]),
    ("Boots", boots, "Footwear", "Shoes", ["Chelsea", "Lace-up"], "Casual",
     ["Men", "Women"], ["Winter", "Fall"], ["Brown", "Black", "Tan", "Maroon"]),
    ("Heels", heels, "Footwear", "Shoes", ["Pump", "Strappy"], "Formal",
     ["Women"], ["Spring", "Summer"], ["Black", "Red", "Beige", "Pink"]),
    ("Handbags", handbag, "Accessories", "Bags", ["Leather", "Tote"], "Casual",
     ["Women"], ["Fall", "Summer"], ["Tan", "Black", "Brown", "Red", "Beige"]),
    ("Backpacks", backpack, "Accessories", "Bags", ["Daypack", "Rolltop"], "Casual",
     ["Unisex"], ["Fall", "Winter"], ["Black", "Navy Blue", "Olive", "Orange"]),
    ("Watches", watch, "Accessories", "Watches", ["Steel", "Gold", "Chronograph"], "Formal",
     ["Men", "Women", "Unisex"], ["Winter", "Summer"], ["Black", "Brown", "Silver", "Navy Blue", "Tan"]),
    ("Caps", cap, "Accessories", "Headwear", ["Baseball", "Logo"], "Sports",
     ["Unisex"], ["Summer"], ["Navy Blue", "Red", "Black", "Beige"]),
    ("Sunglasses", sunglasses, "Accessories", "Eyewear", ["Round", "Square", "Mirrored"], "Casual",
     ["Unisex"], ["Summer"], ["Black", "Tan", "Silver"]),
]

NOUN = {
    "Tshirts": "T-shirt", "Sweatshirts": "Sweatshirt", "Shirts": "Shirt", "Trousers": "Trousers",
    "Shorts": "Shorts", "Dresses": "Dress", "Sports Shoes": "Sneakers", "Boots": "Boots",
    "Heels": "Heels", "Handbags": "Handbag", "Backpacks": "Backpack", "Watches": "Watch",
    "Caps": "Cap", "Sunglasses": "Sunglasses",
}


def draw(drawer, colour, style, seed):
    rnd = random.Random(seed)
    c = Canvas()
    drawer(c, COLOURS[colour], rnd, style)
    return c.done()


def generate(out, seed=2024):
    os.makedirs(out, exist_ok=True)
    rnd = random.Random(seed)
    products = []
    seen = set()
    n = 0
    for (atype, drawer, master, sub, styles, usage, genders, seasons, colours) in TYPES:
        for i, colour in enumerate(colours):
            style = styles[i % len(styles)]
            n += 1
            if style == "Slim Jeans":
                name = f"{colour} Slim Jeans"
            else:
                name = f"{colour} {style} {NOUN[atype]}"
            # Readable ids: the shopper's reasons name them ("similar to X you viewed").
            pid = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            assert pid not in seen, pid
            seen.add(pid)
            draw(drawer, colour, style, seed + n).save(os.path.join(out, f"{pid}.jpg"), quality=90)
            products.append({
                "productId": pid,
                "file": f"{pid}.jpg",
                "attributes": {
                    "productDisplayName": name,
                    "articleType": atype,
                    "masterCategory": master,
                    "subCategory": sub,
                    "baseColour": colour,
                    "gender": rnd.choice(genders),
                    "season": rnd.choice(seasons),
                    "usage": usage,
                },
            })
    # The photo a visitor uploads: a T-shirt that is not in the catalogue.
    draw(tshirt, "Teal", "Crew", seed + 999).save(os.path.join(out, "query.jpg"), quality=90)
    with open(os.path.join(out, "catalog.json"), "w") as f:
        json.dump(products, f, indent=1)
    print(f"drew {len(products)} products and query.jpg in {out}")


def import_all(out, url):
    with open(os.path.join(out, "catalog.json")) as f:
        products = json.load(f)
    for p in products:
        with open(os.path.join(out, p["file"]), "rb") as f:
            image = base64.b64encode(f.read()).decode()
        body = json.dumps({"productId": p["productId"], "image": image,
                           "attributes": p["attributes"]}).encode()
        req = urllib.request.Request(url.rstrip("/") + "/v1/products", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as res:
                res.read()
        except urllib.error.HTTPError as e:
            sys.exit(f"POST /v1/products {p['productId']}: {e.code} {e.read().decode(errors='replace')}")
    print(f"imported {len(products)} products into {url}")


def main(argv):
    if len(argv) == 3 and argv[1] == "generate":
        generate(argv[2])
    elif len(argv) == 4 and argv[1] == "import":
        import_all(argv[2], argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
